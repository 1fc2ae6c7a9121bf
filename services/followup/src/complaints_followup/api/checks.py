"""HTTP resource: satisfaction checks (for agents and integrators)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from complaints_shared.auth import access
from complaints_shared.paging import (
    Cursor,
    Limit,
    Page,
    decode_cursor,
    instant,
    next_cursor,
)
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import RuntimeDep

READ = access("agent", "integrator")

router = APIRouter(
    prefix="/satisfaction-checks", tags=["satisfaction checks"], responses=PROBLEM_RESPONSES
)


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


@router.get("", summary="Satisfaction checks, optionally of one complaint", **READ)
async def list_checks(
    rt: RuntimeDep,
    complaint_id: Annotated[UUID | None, Query()] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[SatisfactionCheckPublic]:
    after_at, after_id = decode_cursor(cursor, instant, UUID) if cursor else (None, None)
    rows = await rt.pool.fetch(
        "SELECT * FROM satisfaction_checks WHERE ($1::uuid IS NULL OR complaint_id = $1)"
        " AND ($2::text IS NULL OR status = $2)"
        " AND ($3::timestamptz IS NULL OR (scheduled_at, check_id) > ($3, $4))"
        " ORDER BY scheduled_at, check_id LIMIT $5",
        complaint_id,
        status,
        after_at,
        after_id,
        limit + 1,
    )
    return Page(
        items=[
            SatisfactionCheckPublic.model_validate(
                {k: r[k] for k in SatisfactionCheckPublic.model_fields}
            )
            for r in rows[:limit]
        ],
        next_cursor=next_cursor(
            rows, limit, lambda r: (r["scheduled_at"].isoformat(), r["check_id"])
        ),
    )
