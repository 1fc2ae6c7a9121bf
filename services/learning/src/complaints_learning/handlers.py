"""Learning assembles complaint facts from every service and detects recurring causes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg

from complaints_learning.domain import (
    Signature,
    occurrence,
    problem_id_of,
    recurrence_window,
    withdraw_occurrence,
)
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
            # category, product, severity: unless resolution's events (a cause, a correction),
            # read first from their own topic, have set them already
            "UPDATE complaint_facts SET category = coalesce(category, $2), channel = $3,"
            " severity = coalesce(severity, $4), received_at = $5, reference = $6,"
            " product = CASE WHEN root_cause IS NULL THEN $7 ELSE product END,"
            " safety_incident = safety_incident OR $8,"
            " language = $9, text = $10, text_version = nextval('complaint_text_seq')"
            " WHERE complaint_id = $1",
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
            "UPDATE complaint_facts SET text = NULL, text_version = nextval('complaint_text_seq')"
            " WHERE complaint_id = ANY($1::uuid[])",
            list(e.payload.complaint_ids),
        )

    async def place(conn: asyncpg.Connection, complaint_id: UUID) -> None:
        """Count the complaint for the problem of its signature (root cause and product, as
        its facts say now), and no longer for the one of an earlier signature."""
        f = await conn.fetchrow(
            "SELECT root_cause, category, product, safety_incident, received_at,"
            " cause_identified_at FROM complaint_facts WHERE complaint_id = $1",
            complaint_id,
        )
        if f is None or f["root_cause"] is None:
            return  # no cause yet: nothing to count
        signature = Signature.of(f["root_cause"], f["category"], f["product"])
        earlier = [
            r["signature"]
            for r in await conn.fetch(
                "SELECT signature FROM occurrences WHERE complaint_id = $1 AND signature <> $2",
                complaint_id,
                signature.key,
            )
        ]
        # two complaints with one signature at once must see each other: the second decides
        # with the first's occurrence committed, so the problem opens (locks in one order)
        for key in sorted({signature.key, *earlier}):
            await one_at_a_time(conn, f"learning:{key}")
        for key in earlier:
            await conn.execute(
                "DELETE FROM occurrences WHERE signature = $1 AND complaint_id = $2",
                key,
                complaint_id,
            )
            old = problem_id_of(key)
            await repository.execute(
                conn, old, lambda p: withdraw_occurrence(p, str(complaint_id), signature)
            )
            await conn.execute(
                "UPDATE complaint_facts SET problem_id = NULL"
                " WHERE complaint_id = $1 AND problem_id = $2",
                complaint_id,
                old,
            )
        occurred_at = f["cause_identified_at"]
        await conn.execute(
            "INSERT INTO occurrences (signature, complaint_id, occurred_at) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            signature.key,
            complaint_id,
            occurred_at,
        )
        since, until = recurrence_window(occurred_at, rt.policy)
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
            lambda p: occurrence(
                p,
                signature,
                str(complaint_id),
                in_window,
                f["safety_incident"],
                happened_at=f["received_at"],
            ),
        )
        problem = saved.state
        if problem is not None and str(complaint_id) in problem.complaints:
            await conn.execute(
                "UPDATE complaint_facts SET problem_id = $2 WHERE complaint_id = $1",
                complaint_id,
                problem.problem_id,
            )

    async def on_cause(conn: asyncpg.Connection, e: Event[rs.CauseIdentified]) -> None:
        d = e.payload
        await conn.execute(FACTS, e.stream_id)
        await conn.execute(
            "UPDATE complaint_facts SET root_cause = $2, responsible = $3,"
            " cause_identified_at = $4, category = $5, product = $6,"
            " safety_incident = safety_incident OR $7 WHERE complaint_id = $1",
            e.stream_id,
            d.root_cause,
            d.responsible,
            e.occurred_at,
            d.category,
            d.product,
            d.safety_incident,
        )
        await place(conn, e.stream_id)

    async def on_classified(conn: asyncpg.Connection, e: Event[rs.CaseClassified]) -> None:
        d = e.payload
        await conn.execute(FACTS, e.stream_id)
        await conn.execute(
            "UPDATE complaint_facts SET category = $2, product = $3, severity = $4"
            " WHERE complaint_id = $1",
            e.stream_id,
            d.category,
            d.product,
            d.severity.value,
        )
        await place(conn, e.stream_id)

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
                    on(rs.CaseClassified, on_classified),
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
