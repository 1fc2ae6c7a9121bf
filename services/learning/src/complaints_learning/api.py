"""HTTP resource: insights."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import RuntimeDep

router = APIRouter(prefix="/insights", tags=["insights"], responses=PROBLEM_RESPONSES)


class CategoryCount(BaseModel):
    category: str
    complaints: int


class CategoryInsight(BaseModel):
    period_from: datetime | None
    period_to: datetime | None
    total: int
    categories: list[CategoryCount]


@router.get("/categories", summary="Complaints per category, most frequent first")
async def categories(
    rt: RuntimeDep,
    period_from: Annotated[datetime | None, Query(alias="from")] = None,
    period_to: Annotated[datetime | None, Query(alias="to")] = None,
) -> CategoryInsight:
    rows = await rt.pool.fetch(
        "SELECT category, count(*) AS complaints FROM complaint_facts"
        " WHERE ($1::timestamptz IS NULL OR received_at >= $1)"
        "   AND ($2::timestamptz IS NULL OR received_at < $2)"
        " GROUP BY category ORDER BY complaints DESC, category",
        period_from,
        period_to,
    )
    counts = [CategoryCount(category=r["category"], complaints=r["complaints"]) for r in rows]
    return CategoryInsight(
        period_from=period_from,
        period_to=period_to,
        total=sum(c.complaints for c in counts),
        categories=counts,
    )
