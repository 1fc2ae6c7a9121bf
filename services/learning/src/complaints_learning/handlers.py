"""Learning assembles complaint facts from every service and detects recurring causes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg

from complaints_learning.domain import (
    Signature,
    counted_by,
    occurrence,
    problem_id_of,
    recurrence_window,
    withdraw_occurrence,
)
from complaints_learning.projection import problems
from complaints_shared.consumer import Handler, Subscription, on, write
from complaints_shared.db import one_at_a_time
from complaints_shared.envelope import Event
from complaints_shared.events import followup as fu
from complaints_shared.events import intake as it
from complaints_shared.events import resolution as rs
from complaints_shared.privacy import ERASED
from complaints_shared.service import Runtime

# Every handler writes a complaint's facts with one upsert: the first event of a complaint to
# arrive (topics and partitions keep no order between services) makes its row.
RECEIVED = """
INSERT INTO complaint_facts AS f (complaint_id, category, channel, severity, received_at,
                                  reference, product, safety_incident, language, text,
                                  text_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, nextval('complaint_text_seq'))
ON CONFLICT (complaint_id) DO UPDATE SET
    -- category, product, severity: unless resolution's events (a cause, a correction), read
    -- first from their own topic, have set them already
    category = coalesce(f.category, EXCLUDED.category), channel = EXCLUDED.channel,
    severity = coalesce(f.severity, EXCLUDED.severity), received_at = EXCLUDED.received_at,
    reference = EXCLUDED.reference,
    product = CASE WHEN f.root_cause IS NULL THEN EXCLUDED.product ELSE f.product END,
    safety_incident = f.safety_incident OR EXCLUDED.safety_incident,
    language = EXCLUDED.language, text = EXCLUDED.text, text_version = EXCLUDED.text_version
"""

# What placing a complaint under its signature reads: its facts as just written, and the
# signatures it is counted for so far.
_PLACED = "root_cause, category, product, safety_incident, received_at, cause_identified_at"


def _placing(upsert: str) -> str:
    return f"""
WITH f AS ({upsert} RETURNING {_PLACED})
SELECT f.*, ARRAY(SELECT signature FROM occurrences WHERE complaint_id = $1) AS signatures
  FROM f
"""


CAUSE = _placing("""
INSERT INTO complaint_facts AS f (complaint_id, root_cause, responsible, cause_identified_at,
                                  category, product, safety_incident)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (complaint_id) DO UPDATE SET
    root_cause = EXCLUDED.root_cause, responsible = EXCLUDED.responsible,
    cause_identified_at = EXCLUDED.cause_identified_at, category = EXCLUDED.category,
    product = EXCLUDED.product, safety_incident = f.safety_incident OR EXCLUDED.safety_incident
""")

CLASSIFIED = _placing("""
INSERT INTO complaint_facts (complaint_id, category, product, severity) VALUES ($1, $2, $3, $4)
ON CONFLICT (complaint_id) DO UPDATE SET
    category = EXCLUDED.category, product = EXCLUDED.product, severity = EXCLUDED.severity
""")

RESOLVED = """
INSERT INTO complaint_facts (complaint_id, resolved_at) VALUES ($1, $2)
ON CONFLICT (complaint_id) DO UPDATE SET resolved_at = EXCLUDED.resolved_at
"""

REOPENED = """
INSERT INTO complaint_facts (complaint_id) VALUES ($1)
ON CONFLICT (complaint_id) DO UPDATE SET resolved_at = NULL
"""

BREACHED = """
INSERT INTO complaint_facts AS f (complaint_id, resolution_breached, first_response_breached)
VALUES ($1, $2 = 'resolution', $2 = 'first_response')
ON CONFLICT (complaint_id) DO UPDATE SET
    resolution_breached = f.resolution_breached OR EXCLUDED.resolution_breached,
    first_response_breached = f.first_response_breached OR EXCLUDED.first_response_breached
"""

SATISFACTION = """
INSERT INTO complaint_facts (complaint_id, score, solved) VALUES ($1, $2, $3)
ON CONFLICT (complaint_id) DO UPDATE SET score = EXCLUDED.score, solved = EXCLUDED.solved
"""

# A complaint counted for a signature, and the complaints counted for it in the window around
# it (this one included: the insert's row is not yet visible to the statement's own read).
OCCURRED = """
WITH added AS (
    INSERT INTO occurrences (signature, complaint_id, occurred_at) VALUES ($1, $2, $3)
    ON CONFLICT DO NOTHING
    RETURNING complaint_id, occurred_at
), window_ AS (
    SELECT complaint_id, occurred_at FROM occurrences
     WHERE signature = $1 AND occurred_at >= $4 AND occurred_at <= $5
    UNION
    SELECT complaint_id, occurred_at FROM added
)
SELECT complaint_id FROM window_ ORDER BY occurred_at, complaint_id
"""


def subscriptions(rt: Runtime) -> list[Subscription]:
    repository = problems(rt)

    def facts(sql: str, *values: Callable[[Event[Any]], object]) -> Handler:
        async def handle(conn: asyncpg.Connection, event: Event[Any]) -> None:
            await write(conn, sql, event.stream_id, *(v(event) for v in values))

        return handle

    async def on_received(conn: asyncpg.Connection, e: Event[it.ComplaintReceived]) -> None:
        d = e.payload
        await write(
            conn,
            RECEIVED,
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
        await write(
            conn,
            "UPDATE complaint_facts SET text = NULL, text_version = nextval('complaint_text_seq')"
            " WHERE complaint_id = ANY($1::uuid[])",
            list(e.payload.complaint_ids),
        )

    async def place(conn: asyncpg.Connection, complaint_id: UUID, f: asyncpg.Record) -> None:
        """Count the complaint for the problem of its signature (root cause and product, as
        its facts ``f`` say now), and no longer for the ones of earlier signatures (``f``'s
        ``signatures``)."""
        if f["root_cause"] is None:
            return  # no cause yet: nothing to count
        signature = Signature.of(f["root_cause"], f["category"], f["product"])
        earlier = [s for s in f["signatures"] if s != signature.key]
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
        since, until = recurrence_window(occurred_at, rt.policy)
        rows = await conn.fetch(OCCURRED, signature.key, complaint_id, occurred_at, since, until)
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
        linked = any(complaint_id in counted_by(e.payload) for e in saved.recorded)
        if problem is not None and str(complaint_id) in problem.complaints and not linked:
            await write(  # counted before (a replay): the projection did not link it now
                conn,
                "UPDATE complaint_facts SET problem_id = $2 WHERE complaint_id = $1",
                complaint_id,
                problem.problem_id,
            )

    async def on_cause(conn: asyncpg.Connection, e: Event[rs.CauseIdentified]) -> None:
        d = e.payload
        f = await conn.fetchrow(
            CAUSE,
            e.stream_id,
            d.root_cause,
            d.responsible,
            e.occurred_at,
            d.category,
            d.product,
            d.safety_incident,
        )
        await place(conn, e.stream_id, f)

    async def on_classified(conn: asyncpg.Connection, e: Event[rs.CaseClassified]) -> None:
        d = e.payload
        f = await conn.fetchrow(CLASSIFIED, e.stream_id, d.category, d.product, d.severity.value)
        await place(conn, e.stream_id, f)

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
                        facts(RESOLVED, lambda e: e.occurred_at),
                    ),
                    on(
                        rs.CaseReopened,
                        facts(REOPENED),
                    ),
                    on(
                        rs.DeadlineBreached,
                        facts(BREACHED, deadline),
                    ),
                    on(
                        fu.SatisfactionRecorded,
                        facts(SATISFACTION, score, solved),
                    ),
                ]
            ),
        )
    ]
