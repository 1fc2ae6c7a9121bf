"""HTTP resource: complaints and open problems similar to a complaint, across languages."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from complaints_learning.search import SimilarSearch
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
    search: SimilarSearch = rt.resources.search
    if me["text_version"] > search.index.version:  # received after this instance looked
        await search.refresh(rt.pool)
    # a generous candidate list: matches whose facts are gone are dropped, problems grouped
    matches = await search.rank(me["text"], limit=max(50, limit * 10), exclude=str(complaint_id))
    score = {m.key: m.score for m in matches}
    rows = await rt.pool.fetch(
        "SELECT f.complaint_id, f.reference, f.category, f.root_cause, f.problem_id,"
        " p.status AS problem_status, p.root_cause AS p_root_cause, p.category AS p_category,"
        " p.product AS p_product FROM complaint_facts f LEFT JOIN problems p USING (problem_id)"
        " WHERE f.complaint_id = ANY($1::uuid[]) AND f.text IS NOT NULL",
        [UUID(m.key) for m in matches],
    )
    by_id = {str(r["complaint_id"]): r for r in rows}
    found = [m for m in matches if m.key in by_id][:limit]
    # an open problem scores as its most similar complaint
    best: dict[UUID, tuple[float, Any]] = {}
    for m in matches:
        r = by_id.get(m.key)
        if r is None or r["problem_id"] is None or r["problem_status"] in (None, "resolved"):
            continue
        if r["problem_id"] not in best or best[r["problem_id"]][0] < score[m.key]:
            best[r["problem_id"]] = (score[m.key], r)
    ranked_problems = sorted(best.items(), key=lambda kv: -kv[1][0])[:limit]
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
                problem_id=problem_id,
                root_cause=r["p_root_cause"],
                category=r["p_category"],
                product=r["p_product"],
                status=r["problem_status"],
                score=s,
            )
            for problem_id, (s, r) in ranked_problems
        ],
    )
