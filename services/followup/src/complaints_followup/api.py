"""HTTP resource: satisfaction checks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import RuntimeDep

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


class SatisfactionCheckList(BaseModel):
    items: list[SatisfactionCheckPublic]


@router.get("", summary="Satisfaction checks, optionally of one complaint")
async def list_checks(
    rt: RuntimeDep,
    complaint_id: Annotated[UUID | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SatisfactionCheckList:
    rows = await rt.pool.fetch(
        "SELECT * FROM satisfaction_checks WHERE ($1::uuid IS NULL OR complaint_id = $1)"
        " ORDER BY scheduled_at, check_id LIMIT $2",
        complaint_id,
        limit,
    )
    return SatisfactionCheckList(
        items=[SatisfactionCheckPublic.model_validate(dict(r)) for r in rows]
    )
