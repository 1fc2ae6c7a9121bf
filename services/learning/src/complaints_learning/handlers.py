"""Learning assembles complaint facts from every service and detects recurring causes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from complaints_learning.domain import Signature, occurrence, recurrence_window
from complaints_learning.projection import problems
from complaints_shared.consumer import Handler, Subscription, on
from complaints_shared.db import one_at_a_time
from complaints_shared.envelope import Event
from complaints_shared.events import followup as fu
from complaints_shared.events import intake as it
from complaints_shared.events import resolution as rs
from complaints_shared.privacy import ERASED
from complaints_shared.service import Runtime

FACTS = "INSERT INTO complaint_facts (complaint_id) VALUES ($1) ON CONFLICT DO NOTHING"


def subscriptions(rt: Runtime) -> list[Subscription]:
    repository = problems(rt)

    def facts(sql: str, *values: Callable[[Event[Any]], object]) -> Handler:
        async def handle(conn: asyncpg.Connection, event: Event[Any]) -> None:
            await conn.execute(FACTS, event.stream_id)
            await conn.execute(sql, event.stream_id, *(v(event) for v in values))

        return handle

    async def on_received(conn: asyncpg.Connection, e: Event[it.ComplaintReceived]) -> None:
        d = e.payload
        await conn.execute(FACTS, e.stream_id)
        await conn.execute(
            "UPDATE complaint_facts SET category = $2, channel = $3, severity = $4,"
            " received_at = $5, reference = $6, product = $7, safety_incident = $8,"
            " language = $9, text = $10 WHERE complaint_id = $1",
            e.stream_id,
            d.category,
            d.channel.value,
            d.severity.value,
            e.occurred_at,
            d.reference,
            d.product,
            d.safety_incident,
            d.language,
            None if ERASED in (d.subject, d.description) else d.text,  # nothing left to compare
        )

    async def on_erased(conn: asyncpg.Connection, e: Event[it.PersonalDataErased]) -> None:
        await conn.execute(
            "UPDATE complaint_facts SET text = NULL WHERE complaint_id = ANY($1::uuid[])",
            list(e.payload.complaint_ids),
        )

    async def on_cause(conn: asyncpg.Connection, e: Event[rs.CauseIdentified]) -> None:
        d = e.payload
        await conn.execute(FACTS, e.stream_id)
        await conn.execute(
            "UPDATE complaint_facts SET root_cause = $2, responsible = $3,"
            " cause_identified_at = $4 WHERE complaint_id = $1",
            e.stream_id,
            d.root_cause,
            d.responsible,
            e.occurred_at,
        )
        signature = Signature.of(d.root_cause, d.category, d.product)
        # two complaints with one signature at once must see each other: the second decides
        # with the first's occurrence committed, so the problem opens
        await one_at_a_time(conn, f"learning:{signature.key}")
        await conn.execute(
            "INSERT INTO occurrences (signature, complaint_id, occurred_at) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            signature.key,
            e.stream_id,
            e.occurred_at,
        )
        since, until = recurrence_window(e.occurred_at, rt.policy)
        rows = await conn.fetch(
            "SELECT complaint_id FROM occurrences WHERE signature = $1 AND occurred_at >= $2"
            " AND occurred_at <= $3 ORDER BY occurred_at, complaint_id",
            signature.key,
            since,
            until,
        )
        in_window = [str(r["complaint_id"]) for r in rows]
        saved = await repository.execute(
            conn,
            signature.problem_id,
            lambda p: occurrence(p, signature, str(e.stream_id), in_window, d.safety_incident),
        )
        problem = saved.state
        if problem is not None and str(e.stream_id) in problem.complaints:
            await conn.execute(
                "UPDATE complaint_facts SET problem_id = $2 WHERE complaint_id = ANY($1::uuid[])",
                [e.stream_id],
                problem.problem_id,
            )

    def deadline(e: Event[rs.DeadlineBreached]) -> object:
        return e.payload.deadline

    def score(e: Event[fu.SatisfactionRecorded]) -> object:
        return e.payload.score

    def solved(e: Event[fu.SatisfactionRecorded]) -> object:
        return e.payload.solved

    t = rt.topics
    return [
        Subscription(
            name=f"{t.prefix}complaints-learning",
            topics=(t.intake, t.resolution, t.followup),
            handlers=dict(
                [
                    on(it.ComplaintReceived, on_received),
                    on(it.PersonalDataErased, on_erased),
                    on(rs.CauseIdentified, on_cause),
                    on(
                        rs.CaseResolved,
                        facts(
                            "UPDATE complaint_facts SET resolved_at = $2 WHERE complaint_id = $1",
                            lambda e: e.occurred_at,
                        ),
                    ),
                    on(
                        rs.CaseReopened,
                        facts(
                            "UPDATE complaint_facts SET resolved_at = NULL WHERE complaint_id = $1"
                        ),
                    ),
                    on(
                        rs.DeadlineBreached,
                        facts(
                            "UPDATE complaint_facts SET"
                            " resolution_breached = resolution_breached OR $2 = 'resolution',"
                            " first_response_breached = first_response_breached"
                            " OR $2 = 'first_response' WHERE complaint_id = $1",
                            deadline,
                        ),
                    ),
                    on(
                        fu.SatisfactionRecorded,
                        facts(
                            "UPDATE complaint_facts SET score = $2, solved = $3"
                            " WHERE complaint_id = $1",
                            score,
                            solved,
                        ),
                    ),
                ]
            ),
        )
    ]
