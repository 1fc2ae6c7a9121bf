"""HTTP resource: the Customer Satisfaction Score, and its rebuild from the events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel

from complaints_followup.projection import record_answer_row
from complaints_shared.auth import access
from complaints_shared.events.followup import SatisfactionRecorded
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import RuntimeDep
from complaints_shared.vocabulary import SATISFIED_MIN_SCORE

FIGURES = access("agent", "analyst", "quality", "integrator")
ADMIN = access("admin")

router = APIRouter(prefix="/satisfaction", tags=["satisfaction"], responses=PROBLEM_RESPONSES)


class Css(BaseModel):
    period_from: datetime | None
    period_to: datetime | None
    category: str | None
    channel: str | None
    answers: int
    checks_sent: int
    response_rate: float | None
    css: float | None
    average_score: float | None
    solved_rate: float | None
    nps: float | None
    scores: dict[str, int]


AWARE = "a date-time with its time zone (`Z` or `+01:00`)"


@router.get(
    "", summary="Customer Satisfaction Score: % of answers scoring 4-5, and more", **FIGURES
)
async def css(
    rt: RuntimeDep,
    period_from: Annotated[
        AwareDatetime | None, Query(alias="from", description="with a time zone")
    ] = None,
    period_to: Annotated[
        AwareDatetime | None, Query(alias="to", description="with a time zone")
    ] = None,
    category: Annotated[str | None, Query(max_length=60)] = None,
    channel: Annotated[str | None, Query(max_length=20)] = None,
) -> Css:
    a = await rt.pool.fetchrow(
        "SELECT count(*) AS n, avg(score)::float AS avg,"
        " count(*) FILTER (WHERE score >= $5) AS happy, count(*) FILTER (WHERE solved) AS solved,"
        " count(nps) AS nps_n, count(*) FILTER (WHERE nps >= 9) AS promoters,"
        " count(*) FILTER (WHERE nps <= 6) AS detractors,"
        " jsonb_object_agg(score, c) FILTER (WHERE score IS NOT NULL) AS scores"
        " FROM (SELECT *, count(*) OVER (PARTITION BY score) AS c FROM satisfaction_answers"
        "  WHERE ($1::timestamptz IS NULL OR answered_at >= $1)"
        "    AND ($2::timestamptz IS NULL OR answered_at < $2)"
        "    AND ($3::text IS NULL OR category = $3) AND ($4::text IS NULL OR channel = $4)) x",
        period_from,
        period_to,
        category,
        channel,
        SATISFIED_MIN_SCORE,
    )
    sent = await rt.pool.fetchval(
        "SELECT count(*) FROM satisfaction_checks c"
        " LEFT JOIN contact_preferences p USING (complaint_id) WHERE c.sent_at IS NOT NULL"
        " AND ($1::timestamptz IS NULL OR c.sent_at >= $1)"
        " AND ($2::timestamptz IS NULL OR c.sent_at < $2)"
        " AND ($3::text IS NULL OR c.category = $3)"
        " AND ($4::text IS NULL OR p.received_channel = $4)",
        period_from,
        period_to,
        category,
        channel,
    )
    n = a["n"]

    def pct(x: int, of: int) -> float | None:
        return round(100 * x / of, 1) if of else None

    return Css(
        period_from=period_from,
        period_to=period_to,
        category=category,
        channel=channel,
        answers=n,
        checks_sent=sent,
        response_rate=pct(n, sent),
        css=pct(a["happy"], n),
        average_score=round(a["avg"], 2) if a["avg"] is not None else None,
        solved_rate=pct(a["solved"], n),
        nps=(
            round(100 * (a["promoters"] - a["detractors"]) / a["nps_n"], 1) if a["nps_n"] else None
        ),
        scores={str(k): 0 for k in range(1, 6)}
        | {str(k): int(v) for k, v in (a["scores"] or {}).items()},
    )


class Rebuilt(BaseModel):
    answers: int


@router.post(
    "/rebuild",
    summary="Rebuild the CSS read model from the recorded events",
    tags=["operations"],
    **ADMIN,
)
async def rebuild(rt: RuntimeDep) -> Rebuilt:
    async with rt.transaction() as conn:
        await conn.execute("LOCK TABLE satisfaction_answers IN EXCLUSIVE MODE")
        await conn.execute("DELETE FROM satisfaction_answers")
        async for chunk in rt.store.scan(conn, types=[SatisfactionRecorded.event_name()]):
            for e in chunk:
                assert isinstance(e.payload, SatisfactionRecorded)
                await record_answer_row(conn, e.stream_id, e.occurred_at, e.payload)
        n = await conn.fetchval("SELECT count(*) FROM satisfaction_answers")
    return Rebuilt(answers=n)
