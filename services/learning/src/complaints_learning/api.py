"""HTTP resources: problems and corrective actions, similar complaints, insights."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from complaints_learning.domain import (
    CorrectiveActionCompletion,
    CorrectiveActionCreate,
    Problem,
    complete_action,
    plan_action,
)
from complaints_learning.similarity import rank
from complaints_learning.store import change, load_problem, project
from complaints_shared.errors import NotFound
from complaints_shared.eventstore import row_to_event
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import Runtime, RuntimeDep

problems = APIRouter(prefix="/problems", tags=["problems"], responses=PROBLEM_RESPONSES)
complaints = APIRouter(
    prefix="/complaints", tags=["similar complaints"], responses=PROBLEM_RESPONSES
)
insights = APIRouter(prefix="/insights", tags=["insights"], responses=PROBLEM_RESPONSES)
operations = APIRouter(prefix="/admin", tags=["operations"])

From = Annotated[datetime | None, Query(alias="from", description="received at or after")]
To = Annotated[datetime | None, Query(alias="to", description="received before")]
PERIOD = (
    "($1::timestamptz IS NULL OR received_at >= $1)"
    " AND ($2::timestamptz IS NULL OR received_at < $2)"
)


class ProblemSummary(BaseModel):
    problem_id: UUID
    root_cause: str
    category: str
    product: str
    status: str
    occurrences: int
    recurrences_after_fix: int
    opened_at: datetime
    fixed_at: datetime | None
    resolved_at: datetime | None
    last_occurrence_at: datetime


class ProblemPublic(ProblemSummary):
    complaints: list[UUID]
    corrective_actions: list[dict[str, Any]]
    history: list[dict[str, Any]]
    version: int


async def _public(rt: Runtime, problem_id: UUID) -> ProblemPublic:
    p, events = await load_problem(rt.pool, rt, problem_id)
    row = await rt.pool.fetchrow("SELECT * FROM problems WHERE problem_id = $1", problem_id)
    return ProblemPublic(
        **{k: row[k] for k in ProblemSummary.model_fields},
        complaints=[UUID(c) for c in p.complaints],
        corrective_actions=[
            {
                "action_id": a.action_id,
                "type": a.type,
                "owner": a.owner,
                "due_at": a.due_at,
                "completed_at": a.completed_at,
            }
            for a in p.actions
        ],
        history=[
            {
                "version": e.version,
                "type": e.type,
                "occurred_at": e.occurred_at,
                **({"complaint_id": e.data["complaint_id"]} if "complaint_id" in e.data else {}),
            }
            for e in events
        ],
        version=p.version,
    )


@problems.get("", summary="Problems, most recently recurring first")
async def list_problems(
    rt: RuntimeDep,
    status: Annotated[str | None, Query(max_length=10)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ProblemSummary]:
    rows = await rt.pool.fetch(
        "SELECT * FROM problems WHERE ($1::text IS NULL OR status = $1)"
        " ORDER BY last_occurrence_at DESC, problem_id LIMIT $2",
        status,
        limit,
    )
    return [
        ProblemSummary.model_validate({k: r[k] for k in ProblemSummary.model_fields}) for r in rows
    ]


@problems.get("/{problem_id}", summary="A problem: its complaints, corrective actions, history")
async def get_problem(problem_id: UUID, rt: RuntimeDep) -> ProblemPublic:
    return await _public(rt, problem_id)


async def _run(rt: Runtime, problem_id: UUID, decide: Any) -> ProblemPublic:
    async with rt.pool.acquire() as conn, conn.transaction():

        def checked(p: Problem | None) -> Any:
            if p is None:
                raise NotFound("problem", problem_id)
            return decide(p)

        await change(conn, rt, problem_id, checked)
    return await _public(rt, problem_id)


@problems.post(
    "/{problem_id}/corrective-actions", summary="Plan a corrective action that removes the cause"
)
async def post_corrective_action(
    problem_id: UUID, body: CorrectiveActionCreate, rt: RuntimeDep
) -> ProblemPublic:
    return await _run(rt, problem_id, lambda p: plan_action(p, body, rt.clock()))


@problems.post(
    "/{problem_id}/corrective-actions/{action_id}/complete",
    summary="A corrective action is done (all done: the verification window starts)",
)
async def post_completion(
    problem_id: UUID, action_id: str, body: CorrectiveActionCompletion, rt: RuntimeDep
) -> ProblemPublic:
    return await _run(rt, problem_id, lambda p: complete_action(p, action_id, body))


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


@complaints.get(
    "/{complaint_id}/similar",
    summary="Earlier complaints and open problems with similar descriptions",
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


@insights.get("/categories", summary="Complaints per category, most frequent first")
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


@insights.get("/top", summary="The top N root causes and categories (the 'top three')")
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


@insights.get("/trends", summary="Complaints per ISO week, and per category")
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


@insights.get("/satisfaction", summary="CSS (% of answers scoring 4-5) per category")
async def satisfaction(
    rt: RuntimeDep, period_from: From = None, period_to: To = None
) -> list[CategorySatisfaction]:
    rows = await rt.pool.fetch(
        "SELECT category, count(*) AS n, avg(score)::float AS avg,"
        " count(*) FILTER (WHERE score >= 4) AS happy FROM complaint_facts"
        f" WHERE score IS NOT NULL AND {PERIOD} GROUP BY category ORDER BY category",
        period_from,
        period_to,
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


@insights.get("/sla", summary="SLA compliance: % met without a breach")
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


@insights.get("/resolution-time", summary="Mean and 90th percentile time to resolve")
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


@insights.get("/recurrence", summary="'Each complaint happens only once': recurrence after fix")
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


@insights.get("/policy", summary="Complaints caused by 'that's our policy' rules")
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


@insights.get("/estimates", summary="Estimates from the seeds' rules of thumb (not measured)")
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


class Rebuild(BaseModel):
    problems: int
    replaying: bool


@operations.post(
    "/rebuild", summary="Rebuild every projection: reset, and replay the topics from offset 0"
)
async def rebuild(request: Request, rt: RuntimeDep) -> Rebuild:
    background = request.app.state.background
    async with rt.pool.acquire() as conn, conn.transaction():
        for c in background.consumers:
            await conn.execute("DELETE FROM inbox WHERE consumer = $1", c.subscription.name)
        await conn.execute("TRUNCATE complaint_facts, occurrences, problems")
        rows = await conn.fetch(
            "SELECT stream_id, version, event_id, type, occurred_at, data"
            " FROM events ORDER BY stream_id, version"
        )
        streams: dict[UUID, list[Any]] = {}
        for r in rows:
            streams.setdefault(r["stream_id"], []).append(row_to_event(r, rt.store.source))
        from complaints_learning.domain import fold

        for events in streams.values():
            problem = fold(events)
            if problem is not None:
                await project(conn, events, problem)
    for c in background.consumers:
        c.rewind()
    return Rebuild(problems=len(streams), replaying=True)
