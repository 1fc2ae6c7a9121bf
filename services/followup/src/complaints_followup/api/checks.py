"""HTTP resource: satisfaction checks (for agents and integrators)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from complaints_shared.auth import access
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


class SatisfactionCheckList(BaseModel):
    items: list[SatisfactionCheckPublic]


@router.get("", summary="Satisfaction checks, optionally of one complaint", **READ)
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
