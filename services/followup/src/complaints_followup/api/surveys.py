"""HTTP resource: the customer's survey, opened with the signed link from the message."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from complaints_followup.domain import SurveyAnswer, record_answer, require_open
from complaints_followup.projection import checks
from complaints_followup.resources import FollowupResources
from complaints_followup.tokens import BadToken, SurveyToken, verify
from complaints_shared.auth import public
from complaints_shared.errors import NotFound
from complaints_shared.events.followup import ReopenRequested
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import Runtime, RuntimeDep

SURVEY = public("the signed, expiring, single-use survey token in the path is the credential")

router = APIRouter(
    prefix="/surveys",
    tags=["surveys (customer-facing)"],
    responses={
        **PROBLEM_RESPONSES,
        410: PROBLEM_RESPONSES[404] | {"description": "Expired or cancelled"},
    },
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
    require_open(row["status"], min(parsed.expires_at, row["expires_at"]), rt.clock())
    return parsed, row


@router.get("/{token}", summary="The survey questions, in the customer's language", **SURVEY)
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


@router.post("/{token}", status_code=201, summary="Answer the survey (once)", **SURVEY)
async def answer_survey(token: str, body: SurveyAnswer, rt: RuntimeDep) -> SurveyRecorded:
    parsed, row = await _open_check(rt, token)
    now = rt.clock()
    async with rt.pool.acquire() as conn, conn.transaction():
        saved = await checks(rt).execute(
            conn,
            row["complaint_id"],
            lambda s: record_answer(
                s, parsed.check_id, body, now, row["contact_category"], row["received_channel"]
            ),
            redecide=False,
        )
    return SurveyRecorded(
        status="recorded",
        reopen_requested=any(isinstance(e.payload, ReopenRequested) for e in saved.recorded),
    )
