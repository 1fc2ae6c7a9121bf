"""Learning assembles complaint facts from every service and detects recurring causes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
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
from complaints_shared.consumer import Batch, Subscription
from complaints_shared.db import one_at_a_time
from complaints_shared.envelope import Event
from complaints_shared.events import followup as fu
from complaints_shared.events import intake as it
from complaints_shared.events import resolution as rs
from complaints_shared.privacy import ERASED
from complaints_shared.service import Runtime

# Every kind of event writes its complaints' facts with one upsert per batch (one row per
# complaint: a complaint's later events of the batch go to a later round): the first event of a
# complaint to arrive (topics and partitions keep no order between services) makes its row.
RECEIVED = """
INSERT INTO complaint_facts AS f (complaint_id, category, channel, severity, received_at,
                                  reference, product, safety_incident, language, text,
                                  text_version)
SELECT x.*, nextval('complaint_text_seq')
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
              $7::text[], $8::bool[], $9::text[], $10::text[]) AS x
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

ERASED_TEXT = """
UPDATE complaint_facts SET text = NULL, text_version = nextval('complaint_text_seq')
 WHERE complaint_id = ANY($1::uuid[])
"""

# What placing a complaint under its signature reads: its facts as just written, and the
# signatures it is counted for so far.
_PLACED = (
    "complaint_id, root_cause, category, product, safety_incident, received_at, cause_identified_at"
)


def _placing(upsert: str) -> str:
    return f"""
WITH f AS ({upsert} RETURNING {_PLACED})
SELECT f.*, ARRAY(SELECT signature FROM occurrences o WHERE o.complaint_id = f.complaint_id)
       AS signatures
  FROM f
"""


CAUSE = _placing("""
INSERT INTO complaint_facts AS f (complaint_id, root_cause, responsible, cause_identified_at,
                                  category, product, safety_incident)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                     $6::text[], $7::bool[])
ON CONFLICT (complaint_id) DO UPDATE SET
    root_cause = EXCLUDED.root_cause, responsible = EXCLUDED.responsible,
    cause_identified_at = EXCLUDED.cause_identified_at, category = EXCLUDED.category,
    product = EXCLUDED.product, safety_incident = f.safety_incident OR EXCLUDED.safety_incident
""")

CLASSIFIED = _placing("""
INSERT INTO complaint_facts (complaint_id, category, product, severity)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
ON CONFLICT (complaint_id) DO UPDATE SET
    category = EXCLUDED.category, product = EXCLUDED.product, severity = EXCLUDED.severity
""")

RESOLVED = """
INSERT INTO complaint_facts (complaint_id, resolved_at)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[])
ON CONFLICT (complaint_id) DO UPDATE SET resolved_at = EXCLUDED.resolved_at
"""

REOPENED = """
INSERT INTO complaint_facts (complaint_id) SELECT * FROM unnest($1::uuid[])
ON CONFLICT (complaint_id) DO UPDATE SET resolved_at = NULL
"""

BREACHED = """
INSERT INTO complaint_facts AS f (complaint_id, resolution_breached, first_response_breached)
SELECT x.id, x.deadline = 'resolution', x.deadline = 'first_response'
  FROM unnest($1::uuid[], $2::text[]) AS x(id, deadline)
ON CONFLICT (complaint_id) DO UPDATE SET
    resolution_breached = f.resolution_breached OR EXCLUDED.resolution_breached,
    first_response_breached = f.first_response_breached OR EXCLUDED.first_response_breached
"""

SATISFACTION = """
INSERT INTO complaint_facts (complaint_id, score, solved)
SELECT * FROM unnest($1::uuid[], $2::int[], $3::bool[])
ON CONFLICT (complaint_id) DO UPDATE SET score = EXCLUDED.score, solved = EXCLUDED.solved
"""

# A complaint counted for a signature, and the complaints counted for it in the window around
# it (this one included: the insert's row is not yet visible to the statement's own read).  The
# window opens a problem; once the signature has one, it decides nothing and is not read (it
# grows with the complaints, and every later one would read all of it again).
OCCURRED = """
WITH added AS (
    INSERT INTO occurrences (signature, complaint_id, occurred_at) VALUES ($1, $2, $3)
    ON CONFLICT DO NOTHING
    RETURNING complaint_id, occurred_at
), window_ AS (
    SELECT complaint_id, occurred_at FROM occurrences
     WHERE signature = $1 AND occurred_at >= $4 AND occurred_at <= $5
       AND NOT EXISTS (SELECT FROM problems WHERE signature = $1)
    UNION
    SELECT complaint_id, occurred_at FROM added
)
SELECT complaint_id FROM window_ ORDER BY occurred_at, complaint_id
"""

# Complaints their problems count already (a replay): their occurrences and links, at once.
COUNTED = """
WITH o AS (
    INSERT INTO occurrences (signature, complaint_id, occurred_at)
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::timestamptz[])
    ON CONFLICT DO NOTHING
)
UPDATE complaint_facts f SET problem_id = x.problem_id
  FROM unnest($2::uuid[], $4::uuid[]) AS x(complaint_id, problem_id)
 WHERE f.complaint_id = x.complaint_id
"""

Row = tuple[Any, ...]


@dataclass(frozen=True)
class _Facts:
    """How one kind of event writes facts: its statement, and the statement's row of each
    complaint the event is about (the complaint first)."""

    sql: str
    rows: Callable[[Event[Any]], list[Row]]
    places: bool = False  # the statement answers the complaints to place under a signature


def _received(e: Event[it.ComplaintReceived]) -> list[Row]:
    d = e.payload
    text = None if ERASED in (d.subject, d.description) else d.text  # nothing left to compare
    return [
        (
            e.stream_id,
            d.category,
            d.channel.value,
            d.severity.value,
            e.occurred_at,
            d.reference,
            d.product,
            d.safety_incident,
            d.language,
            text,
        )
    ]


def _cause(e: Event[rs.CauseIdentified]) -> list[Row]:
    d = e.payload
    return [
        (
            e.stream_id,
            d.root_cause,
            d.responsible,
            e.occurred_at,
            d.category,
            d.product,
            d.safety_incident,
        )
    ]


def _classified(e: Event[rs.CaseClassified]) -> list[Row]:
    d = e.payload
    return [(e.stream_id, d.category, d.product, d.severity.value)]


FACTS: dict[str, _Facts] = {
    it.ComplaintReceived.event_name(): _Facts(RECEIVED, _received),
    it.PersonalDataErased.event_name(): _Facts(
        ERASED_TEXT, lambda e: [(c,) for c in e.payload.complaint_ids]
    ),
    rs.CauseIdentified.event_name(): _Facts(CAUSE, _cause, places=True),
    rs.CaseClassified.event_name(): _Facts(CLASSIFIED, _classified, places=True),
    rs.CaseResolved.event_name(): _Facts(RESOLVED, lambda e: [(e.stream_id, e.occurred_at)]),
    rs.CaseReopened.event_name(): _Facts(REOPENED, lambda e: [(e.stream_id,)]),
    rs.DeadlineBreached.event_name(): _Facts(
        BREACHED, lambda e: [(e.stream_id, e.payload.deadline)]
    ),
    fu.SatisfactionRecorded.event_name(): _Facts(
        SATISFACTION, lambda e: [(e.stream_id, e.payload.score, e.payload.solved)]
    ),
}


def rounds(events: Sequence[Event[Any]]) -> list[dict[str, list[Row]]]:
    """The batch's rows per statement, in rounds: a complaint has at most one row in a round,
    and its rows keep its events' order across rounds (events about different complaints may
    be written in any order: no order holds between topics anyway)."""
    out: list[dict[str, list[Row]]] = []
    next_round: dict[UUID, int] = {}
    for e in events:
        type_name = e.type
        rows = FACTS[type_name].rows(e)
        n = 0  # the round after the latest of its complaints' rows so far (a loop: no
        for row in rows:  # generator per event, which took twice the time)
            if (after := next_round.get(row[0], 0)) > n:
                n = after
        for row in rows:
            next_round[row[0]] = n + 1
        if len(out) == n:
            out.append({})
        out[n].setdefault(type_name, []).extend(rows)
    return out


def subscriptions(rt: Runtime) -> list[Subscription]:
    repository = problems(rt)

    async def handle(conn: asyncpg.Connection, events: Sequence[Event[Any]]) -> None:
        """The batch's facts, round by round, each round's kinds of events one statement each;
        then the complaints whose cause or classification came in are placed."""
        for round_ in rounds(events):
            placed: list[asyncpg.Record] = []
            for type_name, rows in round_.items():
                facts = FACTS[type_name]
                columns = [list(column) for column in zip(*rows, strict=True)]
                if facts.places:
                    placed += await conn.fetch(facts.sql, *columns)
                else:
                    await conn.execute(facts.sql, *columns)
            await place_all(conn, placed)

    async def place_all(conn: asyncpg.Connection, placed: list[asyncpg.Record]) -> None:
        """Each complaint under the problem of its signature.  One its problem counts already
        (a replay) needs no decision: its occurrence and link are written with the others' in
        one statement; any other is placed on its own."""
        wanted = [
            (f, Signature.of(f["root_cause"], f["category"], f["product"]))
            for f in placed
            if f["root_cause"] is not None  # no cause yet: nothing to count
        ]
        states = await repository.states(conn, {s.problem_id for _, s in wanted})
        counted: list[tuple[str, UUID, datetime, UUID]] = []
        for f, signature in wanted:
            if signature.problem_id not in states:
                states |= await repository.states(conn, [signature.problem_id])
            problem = states[signature.problem_id]
            if (
                problem is not None
                and str(f["complaint_id"]) in problem.complaints
                and all(s == signature.key for s in f["signatures"])
            ):
                counted.append(
                    (signature.key, f["complaint_id"], f["cause_identified_at"], problem.problem_id)
                )
                continue
            await place(conn, f, signature)
            # the decision may have changed these problems: read them again when next needed
            for key in {signature.key, *f["signatures"]}:
                states.pop(problem_id_of(key), None)
        if counted:
            await conn.execute(COUNTED, *([list(c) for c in zip(*counted, strict=True)]))

    async def place(conn: asyncpg.Connection, f: asyncpg.Record, signature: Signature) -> None:
        """Count the complaint for the problem of its signature (root cause and product, as
        its facts ``f`` say now), and no longer for the ones of earlier signatures (``f``'s
        ``signatures``)."""
        complaint_id = f["complaint_id"]
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
            await conn.execute(  # counted before (a replay): the projection did not link it now
                "UPDATE complaint_facts SET problem_id = $2 WHERE complaint_id = $1",
                complaint_id,
                problem.problem_id,
            )

    t = rt.topics
    return [
        Subscription(
            name=f"{t.prefix}complaints-learning",
            topics=(t.intake, t.resolution, t.followup),
            batch=Batch(frozenset(FACTS), handle),
            # the complaint's text, for similar complaints; no other personal value
            reads_personal={
                it.ComplaintReceived.event_name(): frozenset({"subject", "description"})
            },
        )
    ]
