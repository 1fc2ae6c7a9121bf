"""Learning assembles complaint facts from every service and detects recurring causes."""

from __future__ import annotations

import asyncpg

from complaints_learning.domain import Signature, occurrence
from complaints_learning.store import change
from complaints_shared.consumer import Handler, Subscription
from complaints_shared.envelope import Event
from complaints_shared.service import Runtime

FACTS = "INSERT INTO complaint_facts (complaint_id) VALUES ($1) ON CONFLICT DO NOTHING"


def subscriptions(rt: Runtime) -> list[Subscription]:
    def facts(sql: str, *values: object) -> Handler:
        async def handle(conn: asyncpg.Connection, event: Event) -> None:
            await conn.execute(FACTS, event.stream_id)
            await conn.execute(
                sql, event.stream_id, *(v(event) if callable(v) else v for v in values)
            )

        return handle

    async def on_received(conn: asyncpg.Connection, e: Event) -> None:
        d = e.data
        await conn.execute(FACTS, e.stream_id)
        await conn.execute(
            "UPDATE complaint_facts SET category = $2, channel = $3, severity = $4,"
            " received_at = $5, reference = $6, product = $7, safety_incident = $8,"
            " language = $9, text = $10 WHERE complaint_id = $1",
            e.stream_id,
            d.get("category", "other"),
            d.get("channel"),
            d.get("severity"),
            e.occurred_at,
            d.get("reference"),
            d.get("product"),
            bool(d.get("safety_incident")),
            d.get("language"),
            f"{d.get('subject', '')}\n{d.get('description', '')}",
        )

    async def on_cause(conn: asyncpg.Connection, e: Event) -> None:
        d = e.data
        await conn.execute(FACTS, e.stream_id)
        await conn.execute(
            "UPDATE complaint_facts SET root_cause = $2, responsible = $3,"
            " cause_identified_at = $4 WHERE complaint_id = $1",
            e.stream_id,
            d["root_cause"],
            d.get("responsible"),
            e.occurred_at,
        )
        signature = Signature.of(d["root_cause"], d.get("category"), d.get("product"))
        await conn.execute(
            "INSERT INTO occurrences (signature, complaint_id, occurred_at) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            signature.key,
            e.stream_id,
            e.occurred_at,
        )
        # occurrences within the window on either side: topics and partitions may deliver a
        # later complaint's cause first, and the outcome must not depend on that order
        window = rt.policy.learning.recurrence_window
        earlier = await conn.fetch(
            "SELECT complaint_id FROM occurrences WHERE signature = $1 AND occurred_at >= $2"
            " AND occurred_at <= $3 ORDER BY occurred_at, complaint_id",
            signature.key,
            e.occurred_at - window,
            e.occurred_at + window,
        )
        in_window = [str(r["complaint_id"]) for r in earlier]
        problem = await change(
            conn,
            rt,
            signature.problem_id,
            lambda p: occurrence(
                p, signature, str(e.stream_id), in_window, bool(d.get("safety_incident"))
            ),
        )
        if problem is not None and str(e.stream_id) in problem.complaints:
            await conn.execute(
                "UPDATE complaint_facts SET problem_id = $2 WHERE complaint_id = ANY($1::uuid[])",
                [e.stream_id],
                problem.problem_id,
            )

    t = rt.topics
    return [
        Subscription(
            name=f"{t.prefix}complaints-learning",
            topics=(t.intake, t.resolution, t.followup),
            handlers={
                "ComplaintReceived": on_received,
                "CauseIdentified": on_cause,
                "CaseResolved": facts(
                    "UPDATE complaint_facts SET resolved_at = $2 WHERE complaint_id = $1",
                    lambda e: e.occurred_at,
                ),
                "CaseReopened": facts(
                    "UPDATE complaint_facts SET resolved_at = NULL WHERE complaint_id = $1"
                ),
                "DeadlineBreached": facts(
                    "UPDATE complaint_facts SET"
                    " resolution_breached = resolution_breached OR $2 = 'resolution',"
                    " first_response_breached = first_response_breached OR $2 = 'first_response'"
                    " WHERE complaint_id = $1",
                    lambda e: e.data.get("deadline"),
                ),
                "SatisfactionRecorded": facts(
                    "UPDATE complaint_facts SET score = $2, solved = $3 WHERE complaint_id = $1",
                    lambda e: e.data["score"],
                    lambda e: e.data["solved"],
                ),
            },
        )
    ]
