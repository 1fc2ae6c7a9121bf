"""HTTP resource: complaints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field

from complaints_intake.domain import (
    Complaint,
    ComplaintCreate,
    ComplaintStatus,
    DetailsCreate,
    Status,
    WithdrawCreate,
    add_details,
    allowed_commands,
    customer_key,
    customer_keys_matching,
    withdraw,
)
from complaints_intake.projection import complaints
from complaints_intake.resources import IntakeResources
from complaints_intake.submissions import Replay, Submission, SubmissionGroups
from complaints_shared.auth import Actor, access
from complaints_shared.conditional import (
    ETAG_HEADER,
    ETAGGED,
    LOCATION_HEADER,
    IfMatch,
    etag,
    expected_version,
    versioned,
)
from complaints_shared.errors import NotFound
from complaints_shared.events import DomainEvent
from complaints_shared.eventstore import current_trace_context
from complaints_shared.paging import Cursor, Limit, Page, bigint, decode_cursor, next_cursor
from complaints_shared.problems import PROBLEM_RESPONSES, problem
from complaints_shared.service import Runtime, RuntimeDep

SUBMIT = access("channel-gateway", "agent", anonymous_setting="public_submission")
READ = access("agent", "integrator")
ON_BEHALF = access("channel-gateway", "agent")  # the customer through a channel, or an agent

router = APIRouter(prefix="/complaints", tags=["complaints"], responses=PROBLEM_RESPONSES)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="retrying with the same key returns the first answer",
    ),
]


class Acknowledgement(BaseModel):
    channel: str
    language: str
    first_response_due: datetime
    message: dict[str, str]


STATUS_DESCRIPTION = (
    "where the complaint is in its lifecycle: received, open (a case is open), in_progress,"
    " awaiting_customer, resolved, closed or withdrawn"
)


class ComplaintPublic(BaseModel):
    complaint_id: UUID
    reference: str
    status: ComplaintStatus = Field(description=STATUS_DESCRIPTION)
    channel: str
    reply_channel: str
    category: str
    category_suggested: bool
    severity: str
    severity_suggested: bool
    language: str
    language_detected: bool
    subject: str
    description: str
    customer: dict[str, Any]
    customer_key: str = Field(
        description="the customer's pseudonymous key: for their data (subject access) and erasure"
    )
    product: str | None = None
    order_reference: str | None = None
    desired_outcome: str | None = None
    safety_incident: bool
    public_post: dict[str, Any] | None = None
    attachments: list[dict[str, Any]]
    possible_duplicate_of: UUID | None = None
    alerts: list[str]
    acknowledgement: Acknowledgement | None
    details: list[dict[str, Any]]
    withdrawal: dict[str, Any] | None = None
    allowed_commands: list[str]
    received_at: datetime
    updated_at: datetime
    version: int


class ComplaintSummary(BaseModel):
    complaint_id: UUID
    reference: str
    status: ComplaintStatus = Field(description=STATUS_DESCRIPTION)
    channel: str
    category: str
    severity: str
    subject: str
    alerts: list[str]
    possible_duplicate_of: UUID | None
    received_at: datetime


class TimelineEntry(BaseModel):
    event_id: UUID
    service: str
    type: str
    occurred_at: datetime
    summary: str


class Timeline(BaseModel):
    complaint_id: UUID
    entries: list[TimelineEntry]


async def resources(rt: RuntimeDep) -> IntakeResources:
    res: IntakeResources = rt.resources
    return res


ResourcesDep = Annotated[IntakeResources, Depends(resources)]


def _public(row: asyncpg.Record) -> ComplaintPublic:
    r = row["received"]
    status = Status.withdrawn if row["status"] == "withdrawn" else Status.received
    return ComplaintPublic(
        complaint_id=row["id"],
        reference=row["reference"],
        status=row["status"],
        channel=row["channel"],
        reply_channel=r["reply_channel"],
        category=row["category"],
        category_suggested=r["category_suggested"],
        severity=row["severity"],
        severity_suggested=r["severity_suggested"],
        language=row["language"],
        language_detected=r["language_detected"],
        subject=row["subject"],
        description=row["description"],
        customer=r["customer"],
        customer_key=row["customer_key"],
        product=r.get("product"),
        order_reference=r.get("order_reference"),
        desired_outcome=r.get("desired_outcome"),
        safety_incident=r.get("safety_incident", False),
        public_post=r.get("public_post"),
        attachments=r.get("attachments", []),
        possible_duplicate_of=row["possible_duplicate_of"],
        alerts=list(row["alerts"]),
        acknowledgement=row["acknowledgement"],
        details=row["details"],
        withdrawal=row["withdrawal"],
        allowed_commands=allowed_commands(status),
        received_at=row["received_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


async def _row(
    conn: asyncpg.Connection | asyncpg.Pool, complaint_id: UUID, lock: bool = False
) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT * FROM complaints WHERE id = $1" + (" FOR UPDATE" if lock else ""), complaint_id
    )
    if row is None:
        raise NotFound("complaint", complaint_id)
    return row


async def _submissions(request: Request) -> SubmissionGroups:
    """The app's submission groups (made at its first submission)."""
    state = request.app.state
    groups: SubmissionGroups | None = getattr(state, "intake_submissions", None)
    if groups is None:
        groups = state.intake_submissions = SubmissionGroups(
            lambda row: _public(row).model_dump(mode="json")
        )
    return groups


Groups = Annotated[SubmissionGroups, Depends(_submissions)]


def _fingerprint(body: ComplaintCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@router.post(
    "",
    status_code=201,
    summary="Record a complaint and acknowledge it at once",
    responses={
        201: {"headers": ETAG_HEADER | LOCATION_HEADER},
        413: PROBLEM_RESPONSES[422] | {"description": "Body too large"},
    },
    **SUBMIT,
)
async def submit_complaint(
    body: ComplaintCreate,
    rt: RuntimeDep,
    res: ResourcesDep,
    groups: Groups,
    response: Response,
    actor: Actor,
    idempotency_key: IdempotencyKey = None,
) -> ComplaintPublic:
    # what a retry with the same key must repeat (a request without a key has no retry)
    fingerprint = None if idempotency_key is None else _fingerprint(body)
    stored = await groups.submit(
        rt,
        res,
        Submission(
            body=body,
            fingerprint=fingerprint,
            customer_key=customer_key(body.customer, rt.keyring.pseudonym_secret),
            idempotency_key=idempotency_key,
            submitted_by=None if actor.anonymous else actor.subject,
            trace_context=current_trace_context(),
        ),
    )
    if isinstance(stored, Replay):
        return _replay(stored.row, fingerprint)  # type: ignore[return-value]
    public = _public(stored)
    response.headers["Location"] = f"/complaints/{public.complaint_id}"
    response.headers["ETag"] = etag(public.version)
    return public


def _replay(row: asyncpg.Record | None, fingerprint: str | None) -> Response:
    """The answer to a request whose Idempotency-Key was used before (``row``: the key's)."""
    if row is None or row["response"] is None:  # pragma: no cover - the first one committed
        return problem(409, "Request in progress", "retry shortly", slug="idempotency-in-progress")
    if row["request_hash"] != fingerprint:
        return problem(
            422,
            "Idempotency-Key reused",
            "this key was used with a different request body",
            slug="idempotency-key-reused",
            errors=[{"field": "header.Idempotency-Key", "message": "used for another request"}],
        )
    body = row["response"]
    complaint_id = body.get("complaint_id") or body["id"]  # answers cached before 0.x: "id"
    return JSONResponse(
        body,
        status_code=row["status_code"],
        headers={
            "Location": f"/complaints/{complaint_id}",
            "ETag": etag(body["version"]),
            "Idempotent-Replayed": "true",
        },
    )


@router.get("", summary="Complaints, newest first, filtered and cursor-paginated", **READ)
async def list_complaints(
    rt: RuntimeDep,
    status: Annotated[ComplaintStatus | None, Query()] = None,
    channel: Annotated[str | None, Query(max_length=20)] = None,
    category: Annotated[str | None, Query(max_length=60)] = None,
    severity: Annotated[Literal["low", "medium", "high", "critical"] | None, Query()] = None,
    customer: Annotated[
        str | None, Query(max_length=254, description="customer id or e-mail")
    ] = None,
    received_from: Annotated[AwareDatetime | None, Query(description="with a time zone")] = None,
    received_to: Annotated[AwareDatetime | None, Query(description="with a time zone")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ComplaintSummary]:
    after = decode_cursor(cursor, bigint)[0] if cursor else None
    keys = (
        customer_keys_matching(customer, rt.keyring.pseudonym_secret)
        if customer is not None
        else None
    )
    rows = await rt.pool.fetch(
        "SELECT id AS complaint_id, seq, reference, status, channel, category, severity,"
        " subject, alerts, possible_duplicate_of, received_at FROM complaints"
        " WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR channel = $2)"
        "   AND ($3::text IS NULL OR category = $3) AND ($4::text IS NULL OR severity = $4)"
        "   AND ($5::text[] IS NULL OR customer_key = ANY($5))"
        "   AND ($6::timestamptz IS NULL OR received_at >= $6)"
        "   AND ($7::timestamptz IS NULL OR received_at < $7)"
        "   AND ($8::bigint IS NULL OR seq < $8)"
        " ORDER BY seq DESC LIMIT $9",
        status,
        channel,
        category,
        severity,
        keys,
        received_from,
        received_to,
        after,
        limit + 1,
    )
    return Page(
        items=[
            ComplaintSummary.model_validate({k: v for k, v in r.items() if k != "seq"})
            for r in rows[:limit]
        ],
        next_cursor=next_cursor(rows, limit, lambda r: (r["seq"],)),
    )


@router.get(
    "/{complaint_id}",
    summary="One complaint, with its acknowledgement and details",
    **READ,
    **ETAGGED,
)
async def get_complaint(complaint_id: UUID, rt: RuntimeDep) -> ComplaintPublic:
    public = _public(await _row(rt.pool, complaint_id))
    return versioned(public, public.version)


@router.get(
    "/{complaint_id}/timeline",
    summary="Everything that happened to the complaint, across all four services",
    **READ,
)
async def get_timeline(complaint_id: UUID, rt: RuntimeDep) -> Timeline:
    await _row(rt.pool, complaint_id)
    rows = await rt.pool.fetch(
        "SELECT event_id, service, type, occurred_at, summary FROM timeline"
        " WHERE complaint_id = $1 ORDER BY occurred_at, position",
        complaint_id,
    )
    return Timeline(
        complaint_id=complaint_id, entries=[TimelineEntry.model_validate(dict(r)) for r in rows]
    )


@router.post(
    "/{complaint_id}/details",
    summary="Add notes, answers or attachment references",
    **ON_BEHALF,
    **ETAGGED,
)
async def post_details(
    complaint_id: UUID,
    body: DetailsCreate,
    rt: RuntimeDep,
    actor: Actor,
    if_match: IfMatch = None,
) -> ComplaintPublic:
    added_by = None if "channel-gateway" in actor.roles else actor.subject
    return await _command(
        rt, complaint_id, if_match, lambda state: add_details(state, body, added_by)
    )


@router.post(
    "/{complaint_id}/withdraw",
    summary="The customer withdraws the complaint",
    **ON_BEHALF,
    **ETAGGED,
)
async def post_withdraw(
    complaint_id: UUID,
    rt: RuntimeDep,
    actor: Actor,
    body: WithdrawCreate | None = None,
    if_match: IfMatch = None,
) -> ComplaintPublic:
    """The body (a reason) is optional: an empty POST withdraws too."""
    given = body or WithdrawCreate()
    return await _command(
        rt, complaint_id, if_match, lambda state: withdraw(state, given, actor.subject)
    )


async def _command(
    rt: Runtime,
    complaint_id: UUID,
    if_match: str | None,
    decide: Callable[[Complaint], list[DomainEvent]],
) -> ComplaintPublic:
    def checked(state: Complaint | None) -> list[DomainEvent]:
        if state is None:
            raise NotFound("complaint", complaint_id)
        return decide(state)

    async with rt.transaction() as conn:
        await complaints(rt).execute(
            conn,
            complaint_id,
            checked,
            expected_version=expected_version(if_match),
            redecide=False,
        )
        public = _public(await _row(conn, complaint_id))
    return versioned(public, public.version)
