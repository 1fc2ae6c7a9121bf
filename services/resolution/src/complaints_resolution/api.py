"""HTTP resource: cases and their commands."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel

from complaints_resolution.domain import ALLOWED_COMMANDS, Case, ResolveCase, fold, resolve
from complaints_shared.errors import NotFound
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import RuntimeDep

router = APIRouter(prefix="/cases", tags=["cases"], responses=PROBLEM_RESPONSES)


class HistoryEntry(BaseModel):
    version: int
    type: str
    occurred_at: datetime


class CasePublic(BaseModel):
    complaint_id: UUID
    state: str
    version: int
    severity: str
    category: str
    opened_at: datetime
    resolved_at: datetime | None
    resolution: dict[str, Any] | None
    allowed_commands: list[str]
    history: list[HistoryEntry]


async def _load(rt: RuntimeDep, complaint_id: UUID) -> tuple[Case, list[HistoryEntry]]:
    events = await rt.store.load(rt.pool, complaint_id)
    case = fold(events)
    if case is None:
        raise NotFound("case", complaint_id)
    return case, [
        HistoryEntry(version=e.version, type=e.type, occurred_at=e.occurred_at) for e in events
    ]


def _public(case: Case, history: list[HistoryEntry]) -> CasePublic:
    return CasePublic(
        complaint_id=case.complaint_id,
        state=case.state.value,
        version=case.version,
        severity=case.severity,
        category=case.category,
        opened_at=case.opened_at,
        resolved_at=case.resolved_at,
        resolution=case.resolution,
        allowed_commands=list(ALLOWED_COMMANDS[case.state]),
        history=history,
    )


@router.get("/{complaint_id}", summary="One case: state, history and the commands allowed now")
async def get_case(complaint_id: UUID, rt: RuntimeDep) -> CasePublic:
    return _public(*await _load(rt, complaint_id))


@router.post("/{complaint_id}/resolve", summary="Resolve the case")
async def resolve_case(complaint_id: UUID, body: ResolveCase, rt: RuntimeDep) -> CasePublic:
    case, _ = await _load(rt, complaint_id)
    new_events = resolve(case, body)
    async with rt.pool.acquire() as conn, conn.transaction():
        await rt.store.append(conn, complaint_id, case.version, new_events)
    return _public(*await _load(rt, complaint_id))
