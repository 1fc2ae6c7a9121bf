"""HTTP resource: insights (top causes, trends, CSS, SLA compliance, recurrence, estimates)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel

from complaints_shared.auth import access
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import RuntimeDep
from complaints_shared.vocabulary import SATISFIED_MIN_SCORE

FIGURES = access("agent", "analyst", "quality", "integrator")

router = APIRouter(prefix="/insights", tags=["insights"], responses=PROBLEM_RESPONSES)

From = Annotated[
    AwareDatetime | None, Query(alias="from", description="received at or after (with a time zone)")
]
To = Annotated[
    AwareDatetime | None, Query(alias="to", description="received before (with a time zone)")
]
PERIOD = (
    "($1::timestamptz IS NULL OR received_at >= $1)"
    " AND ($2::timestamptz IS NULL OR received_at < $2)"
)


class Count(BaseModel):
    key: str
    complaints: int


class CategoryCount(BaseModel):
    category: str
    complaints: int


class CategoryInsight(BaseModel):
    period_from: datetime | None
    period_to: datetime | None
    total: int
    categories: list[CategoryCount]


@router.get("/categories", summary="Complaints per category, most frequent first", **FIGURES)
async def categories(
    rt: RuntimeDep, period_from: From = None, period_to: To = None
) -> CategoryInsight:
    rows = await rt.pool.fetch(
        "SELECT category, count(*) AS complaints FROM complaint_facts WHERE category IS NOT"
        f" NULL AND {PERIOD} GROUP BY category ORDER BY complaints DESC, category",
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


class Top(BaseModel):
    causes: list[Count]
    categories: list[Count]


@router.get("/top", summary="The top N root causes and categories (the 'top three')", **FIGURES)
async def top(
    rt: RuntimeDep,
    period_from: From = None,
    period_to: To = None,
    n: Annotated[int, Query(ge=1, le=50)] = 3,
) -> Top:
    async def counts(column: str) -> list[Count]:
        rows = await rt.pool.fetch(
            f"SELECT {column} AS key, count(*) AS n FROM complaint_facts WHERE {column}"
            f" IS NOT NULL AND {PERIOD} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $3",
            period_from,
            period_to,
            n,
        )
        return [Count(key=r["key"], complaints=r["n"]) for r in rows]

    return Top(causes=await counts("root_cause"), categories=await counts("category"))


class Week(BaseModel):
    week: str
    complaints: int
    categories: dict[str, int]


@router.get("/trends", summary="Complaints per ISO week, and per category", **FIGURES)
async def trends(rt: RuntimeDep, period_from: From = None, period_to: To = None) -> list[Week]:
    rows = await rt.pool.fetch(
        "SELECT to_char(received_at AT TIME ZONE 'UTC', 'IYYY-\"W\"IW') AS week, category,"
        f" count(*) AS n FROM complaint_facts WHERE received_at IS NOT NULL AND {PERIOD}"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        period_from,
        period_to,
    )
    weeks: dict[str, Week] = {}
    for r in rows:
        w = weeks.setdefault(r["week"], Week(week=r["week"], complaints=0, categories={}))
        w.complaints += r["n"]
        w.categories[r["category"]] = r["n"]
    return list(weeks.values())


class CategorySatisfaction(BaseModel):
    category: str
    answers: int
    css: float
    average_score: float


@router.get("/satisfaction", summary="CSS (% of answers scoring 4-5) per category", **FIGURES)
async def satisfaction(
    rt: RuntimeDep, period_from: From = None, period_to: To = None
) -> list[CategorySatisfaction]:
    rows = await rt.pool.fetch(
        "SELECT category, count(*) AS n, avg(score)::float AS avg,"
        " count(*) FILTER (WHERE score >= $3) AS happy FROM complaint_facts"
        f" WHERE score IS NOT NULL AND {PERIOD} GROUP BY category ORDER BY category",
        period_from,
        period_to,
        SATISFIED_MIN_SCORE,
    )
    return [
        CategorySatisfaction(
            category=r["category"],
            answers=r["n"],
            css=round(100 * r["happy"] / r["n"], 1),
            average_score=round(r["avg"], 2),
        )
        for r in rows
    ]


class Sla(BaseModel):
    resolved: int
    resolution_compliance: float | None
    complaints: int
    first_response_compliance: float | None


@router.get("/sla", summary="SLA compliance: % met without a breach", **FIGURES)
async def sla(rt: RuntimeDep, period_from: From = None, period_to: To = None) -> Sla:
    r = await rt.pool.fetchrow(
        "SELECT count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved,"
        " count(*) FILTER (WHERE resolved_at IS NOT NULL AND NOT resolution_breached) AS ok,"
        " count(*) AS n, count(*) FILTER (WHERE NOT first_response_breached) AS fr_ok"
        f" FROM complaint_facts WHERE received_at IS NOT NULL AND {PERIOD}",
        period_from,
        period_to,
    )
    return Sla(
        resolved=r["resolved"],
        resolution_compliance=round(100 * r["ok"] / r["resolved"], 1) if r["resolved"] else None,
        complaints=r["n"],
        first_response_compliance=round(100 * r["fr_ok"] / r["n"], 1) if r["n"] else None,
    )


class ResolutionTime(BaseModel):
    resolved: int
    mean_hours: float | None
    p90_hours: float | None


@router.get("/resolution-time", summary="Mean and 90th percentile time to resolve", **FIGURES)
async def resolution_time(
    rt: RuntimeDep, period_from: From = None, period_to: To = None
) -> ResolutionTime:
    r = await rt.pool.fetchrow(
        "SELECT count(*) AS n, avg(h)::float AS mean,"
        " percentile_cont(0.9) WITHIN GROUP (ORDER BY h)::float AS p90 FROM ("
        " SELECT extract(epoch FROM resolved_at - received_at) / 3600 AS h FROM complaint_facts"
        f" WHERE resolved_at IS NOT NULL AND received_at IS NOT NULL AND {PERIOD}) x",
        period_from,
        period_to,
    )
    return ResolutionTime(
        resolved=r["n"],
        mean_hours=round(r["mean"], 2) if r["mean"] is not None else None,
        p90_hours=round(r["p90"], 2) if r["p90"] is not None else None,
    )


class Recurrence(BaseModel):
    problems: int
    problems_fixed: int
    recurred_after_fix: int
    recurrence_after_fix_rate: float | None
    resolved: int


@router.get(
    "/recurrence", summary="'Each complaint happens only once': recurrence after fix", **FIGURES
)
async def recurrence(rt: RuntimeDep) -> Recurrence:
    r = await rt.pool.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE fixed_at IS NOT NULL OR resolved_at"
        " IS NOT NULL OR recurrences_after_fix > 0) AS fixed,"
        " count(*) FILTER (WHERE recurrences_after_fix > 0) AS recurred,"
        " count(*) FILTER (WHERE status = 'resolved') AS resolved FROM problems"
    )
    return Recurrence(
        problems=r["n"],
        problems_fixed=r["fixed"],
        recurred_after_fix=r["recurred"],
        recurrence_after_fix_rate=round(100 * r["recurred"] / r["fixed"], 1)
        if r["fixed"]
        else None,
        resolved=r["resolved"],
    )


class PolicyCaused(BaseModel):
    complaints_with_cause: int
    caused_by_policy: int
    share: float | None
    categories: list[Count]


@router.get("/policy", summary="Complaints caused by 'that's our policy' rules", **FIGURES)
async def policy_caused(
    rt: RuntimeDep, period_from: From = None, period_to: To = None
) -> PolicyCaused:
    r = await rt.pool.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE root_cause = 'policy') AS p"
        f" FROM complaint_facts WHERE root_cause IS NOT NULL AND {PERIOD}",
        period_from,
        period_to,
    )
    rows = await rt.pool.fetch(
        "SELECT category AS key, count(*) AS n FROM complaint_facts WHERE root_cause = 'policy'"
        f" AND {PERIOD} GROUP BY 1 ORDER BY 2 DESC, 1",
        period_from,
        period_to,
    )
    return PolicyCaused(
        complaints_with_cause=r["n"],
        caused_by_policy=r["p"],
        share=round(100 * r["p"] / r["n"], 1) if r["n"] else None,
        categories=[Count(key=x["key"], complaints=x["n"]) for x in rows],
    )


class Range(BaseModel):
    low: int
    high: int


class Estimates(BaseModel):
    label: str
    complaints: int
    silent_unhappy_customers: Range
    word_of_mouth_reach: Range
    basis: list[str]


@router.get(
    "/estimates", summary="Estimates from the seeds' rules of thumb (not measured)", **FIGURES
)
async def estimates(rt: RuntimeDep, period_from: From = None, period_to: To = None) -> Estimates:
    n = await rt.pool.fetchval(
        f"SELECT count(*) FROM complaint_facts WHERE received_at IS NOT NULL AND {PERIOD}",
        period_from,
        period_to,
    )
    silent = Range(low=n * 25, high=n * 50)
    return Estimates(
        label="estimate",
        complaints=n,
        silent_unhappy_customers=silent,
        word_of_mouth_reach=Range(low=silent.low * 9, high=silent.high * 10),
        basis=[
            "only 2-4% of unhappy customers complain: each complaint stands for 25-50",
            "an unhappy customer tells 9-10 people",
        ],
    )
