"""HTTP resource: complaints and open problems similar to a complaint, across languages."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from complaints_learning.similarity import rank
from complaints_shared.auth import access
from complaints_shared.errors import NotFound
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import RuntimeDep

READ = access("agent", "analyst", "quality")

router = APIRouter(prefix="/complaints", tags=["similar complaints"], responses=PROBLEM_RESPONSES)


class SimilarComplaint(BaseModel):
    complaint_id: UUID
    reference: str | None
    score: float
    category: str | None
    root_cause: str | None
    problem_id: UUID | None


class SimilarProblem(BaseModel):
    problem_id: UUID
    root_cause: str
    category: str
    product: str
    status: str
    score: float


class Similar(BaseModel):
    complaint_id: UUID
    cause_known: bool
    complaints: list[SimilarComplaint]
    problems: list[SimilarProblem]


@router.get(
    "/{complaint_id}/similar",
    summary="Earlier complaints and open problems with similar descriptions",
    **READ,
)
async def similar(
    complaint_id: UUID, rt: RuntimeDep, limit: Annotated[int, Query(ge=1, le=20)] = 5
) -> Similar:
    me = await rt.pool.fetchrow(
        "SELECT * FROM complaint_facts WHERE complaint_id = $1", complaint_id
    )
    if me is None or me["text"] is None:
        raise NotFound("complaint", complaint_id)
    rows = await rt.pool.fetch(
        "SELECT complaint_id, reference, category, root_cause, problem_id, text"
        " FROM complaint_facts WHERE complaint_id <> $1 AND text IS NOT NULL"
        " ORDER BY received_at DESC LIMIT 2000",
        complaint_id,
    )
    by_id = {str(r["complaint_id"]): r for r in rows}
    found = rank(me["text"], {k: r["text"] for k, r in by_id.items()}, limit=limit)
    open_problems = await rt.pool.fetch(
        "SELECT p.*, string_agg(f.text, ' ') AS text FROM problems p"
        " JOIN complaint_facts f USING (problem_id) WHERE p.status <> 'resolved'"
        " GROUP BY p.problem_id"
    )
    prob_by_id = {str(p["problem_id"]): p for p in open_problems}
    found_p = rank(me["text"], {k: p["text"] for k, p in prob_by_id.items()}, limit=limit)
    return Similar(
        complaint_id=complaint_id,
        cause_known=me["root_cause"] is not None,
        complaints=[
            SimilarComplaint(
                complaint_id=by_id[m.key]["complaint_id"],
                reference=by_id[m.key]["reference"],
                score=m.score,
                category=by_id[m.key]["category"],
                root_cause=by_id[m.key]["root_cause"],
                problem_id=by_id[m.key]["problem_id"],
            )
            for m in found
        ],
        problems=[
            SimilarProblem(
                **{
                    k: prob_by_id[m.key][k]
                    for k in ("problem_id", "root_cause", "category", "product", "status")
                },
                score=m.score,
            )
            for m in found_p
        ],
    )
