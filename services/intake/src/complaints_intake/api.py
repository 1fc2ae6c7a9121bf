"""HTTP resource: complaints."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

from complaints_shared.errors import NotFound
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import RuntimeDep
from fastapi import APIRouter, Response
from pydantic import BaseModel

from complaints_intake.domain import ComplaintCreate, receive
from complaints_intake.projection import project

router = APIRouter(prefix="/complaints", tags=["complaints"], responses=PROBLEM_RESPONSES)


class ComplaintPublic(BaseModel):
    id: UUID
    status: str
    channel: str
    category: str
    severity: str
    subject: str
    received_at: datetime
    version: int


async def _read(rt: RuntimeDep, complaint_id: UUID) -> ComplaintPublic:
    row = await rt.pool.fetchrow("SELECT * FROM complaints WHERE id = $1", complaint_id)
    if row is None:
        raise NotFound("complaint", complaint_id)
    return ComplaintPublic.model_validate(dict(row))


@router.post("", status_code=201, summary="Record a complaint")
async def submit_complaint(
    body: ComplaintCreate, rt: RuntimeDep, response: Response
) -> ComplaintPublic:
    complaint_id = uuid4()
    new_events = receive(body, rt.policy)
    async with rt.pool.acquire() as conn, conn.transaction():
        recorded = await rt.store.append(conn, complaint_id, 0, new_events)
        await project(conn, recorded)
    response.headers["Location"] = f"/complaints/{complaint_id}"
    return await _read(rt, complaint_id)


@router.get("/{complaint_id}", summary="One complaint")
async def get_complaint(complaint_id: UUID, rt: RuntimeDep) -> ComplaintPublic:
    return await _read(rt, complaint_id)
