"""HTTP resource: the customer's survey, opened with the signed link from the message."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ValidationError

from complaints_followup.domain import SurveyAnswer, record_answer, require_open
from complaints_followup.page import message_page, survey_page
from complaints_followup.projection import checks
from complaints_followup.resources import FollowupResources
from complaints_followup.tokens import BadToken, SurveyToken, verify
from complaints_shared.auth import public
from complaints_shared.errors import CommandRejected, Gone, NotFound
from complaints_shared.events.followup import ReopenRequested
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import Runtime, RuntimeDep
from complaints_shared.vocabulary import format_when

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


async def _find_check(rt: Runtime, token: str) -> tuple[SurveyToken, Any]:
    """The check a link names (404 for a link that names none: tampered, unknown)."""
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
    return parsed, row


def _require_open(rt: Runtime, parsed: SurveyToken, row: Any) -> None:
    require_open(row["status"], min(parsed.expires_at, row["expires_at"]), rt.clock())


async def _open_check(rt: Runtime, token: str) -> tuple[SurveyToken, Any]:
    parsed, row = await _find_check(rt, token)
    _require_open(rt, parsed, row)
    return parsed, row


async def _open_for_page(
    rt: Runtime, request: Request, token: str
) -> tuple[SurveyToken, Any] | HTMLResponse:
    """The open check, or the page that says why not (in the check's language if known)."""
    try:
        parsed, row = await _find_check(rt, token)
    except NotFound as exc:
        return _error_page(rt, request, exc, None)
    try:
        _require_open(rt, parsed, row)
    except PAGE_ERRORS as exc:
        return _error_page(rt, request, exc, row)
    return parsed, row


def _wants_html(request: Request) -> bool:
    """A browser (it asks for HTML before JSON) gets the page; API clients get JSON."""
    accept = request.headers.get("accept", "")
    html, json = accept.find("text/html"), accept.find("application/json")
    return html >= 0 and (json < 0 or html < json)


def _language(rt: Runtime, row: Any | None, request: Request) -> str:
    """The check's language; for a link that names no check, the browser's first language
    the service speaks."""
    res: FollowupResources = rt.resources
    if row is not None and row["language"] in res.texts:
        return str(row["language"])
    for part in request.headers.get("accept-language", "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in res.texts:
            return code
    return rt.policy.intake.default_language


def _error_page(rt: Runtime, request: Request, exc: Exception, row: Any | None) -> HTMLResponse:
    res: FollowupResources = rt.resources
    lang = _language(rt, row, request)
    t = res.texts[lang]["page"]
    if isinstance(exc, CommandRejected):  # answered already
        status, title, text = 409, t["answered_title"], t["answered"]
    elif isinstance(exc, Gone):
        status, title, text = 410, t["expired_title"], t["expired"]
    else:
        status, title, text = 404, t["invalid_title"], t["invalid"]
    return HTMLResponse(message_page(lang, title, text), status_code=status, headers=NO_STORE)


NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
PAGE_ERRORS = (NotFound, Gone, CommandRejected)


def _page(rt: Runtime, request: Request, token: str, row: Any, **kw: Any) -> str:
    res: FollowupResources = rt.resources
    lang = _language(rt, row, request)
    return survey_page(
        lang,
        res.texts[lang]["survey"],
        res.texts[lang]["page"],
        reference=row["reference"] or "",
        expires=format_when(row["expires_at"], lang, rt.policy.calendar.timezone, zone_name=True),
        action=f"/surveys/{token}",
        **kw,
    )


@router.get(
    "/{token}",
    summary="The survey: an HTML page for a browser, the questions as JSON for an API client",
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
    **SURVEY,
)
async def get_survey(token: str, rt: RuntimeDep, request: Request) -> Survey:
    if _wants_html(request):
        opened = await _open_for_page(rt, request, token)
        if isinstance(opened, HTMLResponse):
            return opened  # type: ignore[return-value]
        html = _page(rt, request, token, opened[1])
        return HTMLResponse(html, headers=NO_STORE)  # type: ignore[return-value]
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


FORM = "application/x-www-form-urlencoded"
_ANSWER_SCHEMA = {"$ref": "#/components/schemas/SurveyAnswer"}


@router.post(
    "/{token}",
    status_code=201,
    summary="Answer the survey (once): JSON from an API client, or the page's form",
    responses={201: {"content": {"text/html": {"schema": {"type": "string"}}}}},
    openapi_extra={
        **SURVEY["openapi_extra"],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ANSWER_SCHEMA},
                FORM: {"schema": _ANSWER_SCHEMA},
            },
        },
    },
)
async def answer_survey(token: str, rt: RuntimeDep, request: Request) -> SurveyRecorded:
    raw = await request.body()
    if request.headers.get("content-type", "").split(";")[0].strip() == FORM:
        return await _answer_form(rt, request, token, raw)  # type: ignore[return-value]
    try:
        body = SurveyAnswer.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    parsed, row = await _open_check(rt, token)
    return await _record(rt, parsed, row, body)


async def _record(rt: Runtime, parsed: SurveyToken, row: Any, body: SurveyAnswer) -> SurveyRecorded:
    now = rt.clock()
    async with rt.transaction() as conn:
        saved = await checks(rt).execute(
            conn,
            row["complaint_id"],
            lambda s: record_answer(
                s, parsed.check_id, body, now, row["contact_category"], row["received_channel"]
            ),
            # decided again on a concurrent append (the survey's e-mail recorded as sent, say):
            # the customer answered the survey, not a version of its stream, and whether it is
            # still open (not answered meanwhile, expired or withdrawn) is checked once more
            redecide=True,
        )
    return SurveyRecorded(
        status="recorded",
        reopen_requested=any(isinstance(e.payload, ReopenRequested) for e in saved.recorded),
    )


async def _answer_form(rt: Runtime, request: Request, token: str, raw: bytes) -> HTMLResponse:
    """The page's form: the thank-you page, or the form again saying what to fix."""
    opened = await _open_for_page(rt, request, token)
    if isinstance(opened, HTMLResponse):
        return opened
    parsed, row = opened
    try:
        fields = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), strict_parsing=False).items()}
    except UnicodeDecodeError:
        fields = {}
    answer = {k: v for k, v in fields.items() if k in SurveyAnswer.model_fields and v != ""}
    try:
        body = SurveyAnswer.model_validate(answer)
    except ValidationError as exc:
        res: FollowupResources = rt.resources
        texts = res.texts[_language(rt, row, request)]["survey"]
        wrong = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
        html = _page(
            rt,
            request,
            token,
            row,
            given=fields,
            errors=[str(texts.get(field, field)) for field in wrong],
        )
        return HTMLResponse(html, status_code=422, headers=NO_STORE)
    try:
        recorded = await _record(rt, parsed, row, body)
    except PAGE_ERRORS as exc:  # answered meanwhile
        return _error_page(rt, request, exc, row)
    lang = _language(rt, row, request)
    t = (rt.resources.texts[lang])["page"]
    text = t["thanks_reopen"] if recorded.reopen_requested else t["thanks"]
    return HTMLResponse(
        message_page(lang, t["thanks_title"], text), status_code=201, headers=NO_STORE
    )
