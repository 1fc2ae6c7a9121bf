"""HTTP resources: satisfaction checks, the customer's survey, and CSS."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from complaints_followup.domain import SurveyAnswer, record_answer
from complaints_followup.resources import FollowupResources
from complaints_followup.store import change, record_answer_row
from complaints_followup.tokens import BadToken, SurveyToken, verify
from complaints_shared.errors import CommandRejected, Gone, NotFound
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import Runtime, RuntimeDep

checks = APIRouter(
    prefix="/satisfaction-checks", tags=["satisfaction checks"], responses=PROBLEM_RESPONSES
)
surveys = APIRouter(
    prefix="/surveys",
    tags=["surveys (customer-facing)"],
    responses={
        **PROBLEM_RESPONSES,
        410: PROBLEM_RESPONSES[404] | {"description": "Expired or cancelled"},
    },
)
satisfaction = APIRouter(prefix="/satisfaction", tags=["satisfaction"], responses=PROBLEM_RESPONSES)


class SatisfactionCheckPublic(BaseModel):
    check_id: UUID
    complaint_id: UUID
    status: str
    channel: str
    language: str
    due_at: datetime
    expires_at: datetime
    scheduled_at: datetime
    sent_at: datetime | None
    reminder_at: datetime | None
    reminded_at: datetime | None
    answered_at: datetime | None


class SatisfactionCheckList(BaseModel):
    items: list[SatisfactionCheckPublic]


@checks.get("", summary="Satisfaction checks, optionally of one complaint")
async def list_checks(
    rt: RuntimeDep,
    complaint_id: Annotated[UUID | None, Query()] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SatisfactionCheckList:
    rows = await rt.pool.fetch(
        "SELECT * FROM satisfaction_checks WHERE ($1::uuid IS NULL OR complaint_id = $1)"
        " AND ($2::text IS NULL OR status = $2) ORDER BY scheduled_at, check_id LIMIT $3",
        complaint_id,
        status,
        limit,
    )
    return SatisfactionCheckList(
        items=[
            SatisfactionCheckPublic.model_validate(
                {k: r[k] for k in SatisfactionCheckPublic.model_fields}
            )
            for r in rows
        ]
    )


class Question(BaseModel):
    id: str
    text: str
    type: str
    required: bool
    minimum: int | None = None
    maximum: int | None = None


class Survey(BaseModel):
    reference: str
    language: str
    title: str
    questions: list[Question]
    expires_at: datetime


class SurveyRecorded(BaseModel):
    status: str
    reopen_requested: bool


async def _open_check(rt: Runtime, token: str) -> tuple[SurveyToken, Any]:
    res: FollowupResources = rt.resources
    try:
        parsed = verify(token, await res.secret(rt.pool))
    except BadToken:
        raise NotFound("survey", "(this link)") from None
    row = await rt.pool.fetchrow(
        "SELECT c.*, p.reference, p.category AS contact_category, p.received_channel"
        " FROM satisfaction_checks c LEFT JOIN contact_preferences p USING (complaint_id)"
        " WHERE c.check_id = $1",
        parsed.check_id,
    )
    if row is None:
        raise NotFound("survey", "(this link)")
    if row["status"] == "answered":
        raise CommandRejected("answered", "answer", [])
    if (
        row["status"] in ("expired", "cancelled")
        or min(parsed.expires_at, row["expires_at"]) <= rt.clock()
    ):
        raise Gone(
            "this survey has expired"
            if row["status"] != "cancelled"
            else "this survey was withdrawn"
        )
    return parsed, row


@surveys.get("/{token}", summary="The survey questions, in the customer's language")
async def get_survey(token: str, rt: RuntimeDep) -> Survey:
    _, row = await _open_check(rt, token)
    res: FollowupResources = rt.resources
    lang = row["language"] if row["language"] in res.texts else rt.policy.intake.default_language
    t = res.texts[lang]["survey"]
    reference = row["reference"] or ""
    return Survey(
        reference=reference,
        language=lang,
        title=t["title"].format(reference=reference),
        expires_at=row["expires_at"],
        questions=[
            Question(
                id="score", text=t["score"], type="integer", required=True, minimum=1, maximum=5
            ),
            Question(id="solved", text=t["solved"], type="boolean", required=True),
            Question(id="comment", text=t["comment"], type="text", required=False),
            Question(
                id="nps", text=t["nps"], type="integer", required=False, minimum=0, maximum=10
            ),
        ],
    )


@surveys.post("/{token}", status_code=201, summary="Answer the survey (once)")
async def answer_survey(token: str, body: SurveyAnswer, rt: RuntimeDep) -> SurveyRecorded:
    parsed, row = await _open_check(rt, token)
    now = rt.clock()
    async with rt.pool.acquire() as conn, conn.transaction():
        recorded = await change(
            conn,
            rt,
            row["complaint_id"],
            lambda s: record_answer(
                s, str(parsed.check_id), body, now, row["contact_category"], row["received_channel"]
            ),
        )
    return SurveyRecorded(
        status="recorded", reopen_requested=any(e.type == "ReopenRequested" for e in recorded)
    )


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


@satisfaction.get("", summary="Customer Satisfaction Score: % of answers scoring 4-5, and more")
async def css(
    rt: RuntimeDep,
    period_from: Annotated[datetime | None, Query(alias="from")] = None,
    period_to: Annotated[datetime | None, Query(alias="to")] = None,
    category: Annotated[str | None, Query(max_length=60)] = None,
    channel: Annotated[str | None, Query(max_length=20)] = None,
) -> Css:
    a = await rt.pool.fetchrow(
        "SELECT count(*) AS n, avg(score)::float AS avg,"
        " count(*) FILTER (WHERE score >= 4) AS happy, count(*) FILTER (WHERE solved) AS solved,"
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


@satisfaction.post(
    "/rebuild", summary="Rebuild the CSS read model from the recorded events", tags=["operations"]
)
async def rebuild(rt: RuntimeDep) -> Rebuilt:
    async with rt.pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE satisfaction_answers IN EXCLUSIVE MODE")
        await conn.execute("DELETE FROM satisfaction_answers")
        for e in [e for e in await _recorded_events(conn, rt)]:
            await record_answer_row(conn, e)
        n = await conn.fetchval("SELECT count(*) FROM satisfaction_answers")
    return Rebuilt(answers=n)


async def _recorded_events(conn: Any, rt: Runtime) -> list[Any]:
    from complaints_shared.eventstore import row_to_event

    rows = await conn.fetch(
        "SELECT stream_id, version, event_id, type, occurred_at, data FROM events"
        " WHERE type = 'SatisfactionRecorded' ORDER BY occurred_at, stream_id, version"
    )
    return [row_to_event(r, rt.store.source) for r in rows]
