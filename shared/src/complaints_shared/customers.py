"""HTTP resource: a customer as a data subject — everything the platform holds about them.

Every service answers ``GET /customers/{customer_key}/data`` for itself: the events of the
customer's complaints in its event store (personal values opened while the customer's key
lives) and the rows its read models keep about them.  A service with ``COMPLAINTS_PEERS``
(intake, in the shipped set-ups) asks the others as well and answers for the whole platform, so
a subject access request is one call.  Only the privacy officer and administrators may ask.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
import httpx
from fastapi import APIRouter, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from opentelemetry.trace import SpanKind, Tracer
from pydantic import BaseModel, Field

from complaints_shared.auth import access
from complaints_shared.errors import NotFound
from complaints_shared.problems import PROBLEM_RESPONSES, problem
from complaints_shared.telemetry import inject_context, record_error, record_status

PRIVACY = access("privacy", "admin")

CustomerKey = Annotated[
    str,
    Path(
        pattern=r"^[0-9a-f]{64}$",
        description="the customer's pseudonymous key (`customer_key` of their complaints)",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    ),
]

Records = Callable[[asyncpg.Connection, list[UUID]], Awaitable[dict[str, list[dict[str, Any]]]]]
"""A service's read-model rows about some complaints, by table."""


class ServiceData(BaseModel):
    events: list[dict[str, Any]] = Field(
        description="the events of the customer's complaints in this service's store"
    )
    records: dict[str, list[dict[str, Any]]] = Field(
        description="the rows this service's read models keep about them, by table"
    )


class SubjectData(BaseModel):
    customer_key: str
    complaint_ids: list[UUID]
    erased: bool = Field(
        description="the customer's key was destroyed: personal values read as erased"
    )
    services: dict[str, ServiceData]


def rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(r) for r in records]


def by_complaint(*tables: str) -> Records:
    """The :data:`Records` of tables keyed by ``complaint_id``: every row of theirs."""

    async def records(
        conn: asyncpg.Connection, complaint_ids: list[UUID]
    ) -> dict[str, list[dict[str, Any]]]:
        return {
            table: rows(
                await conn.fetch(
                    f"SELECT * FROM {table} WHERE complaint_id = ANY($1::uuid[])", complaint_ids
                )
            )
            for table in tables
        }

    return records


_PREFIX, _DATA = "/customers", "/{customer_key}/data"
_PEER_PATH = _PREFIX + _DATA  # what a service asks its peers for


def router(service: str, records: Records | None) -> APIRouter:
    r = APIRouter(prefix=_PREFIX, tags=["customers (personal data)"], responses=PROBLEM_RESPONSES)

    @r.get(
        _DATA,
        summary="Everything held about one customer (subject access request)",
        response_model=SubjectData,
        responses={503: PROBLEM_RESPONSES[409] | {"description": "another service did not answer"}},
        **PRIVACY,
    )
    async def subject_data(
        customer_key: CustomerKey,
        request: Request,
        scope: Annotated[
            Literal["platform", "service"],
            Query(description="`service`: this service's part only"),
        ] = "platform",
    ) -> Response:
        from complaints_shared.service import Runtime  # the runtime module imports this one

        rt: Runtime = request.app.state.runtime
        ids = await rt.keyring.streams_of(customer_key)
        if not ids:
            raise NotFound("customer", customer_key)
        async with rt.pool.acquire() as conn:
            events = [e for cid in ids for e in await rt.store.load(conn, cid)]
            own = ServiceData(
                events=[
                    {
                        "event_id": e.event_id,
                        "complaint_id": e.stream_id,
                        "type": e.type,
                        "occurred_at": e.occurred_at,
                        "data": e.payload.to_json(),
                    }
                    for e in events
                ],
                records=await records(conn, ids) if records else {},
            )
        services = {service: own}
        if scope == "platform" and rt.peers_http is not None:  # made when there are peers
            answers = await asyncio.gather(
                *(
                    _ask(
                        rt.peers_http,
                        rt.telemetry.tracer,
                        name,
                        url,
                        customer_key,
                        request.headers.get("authorization", ""),
                    )
                    for name, url in rt.settings.peers.items()
                ),
                return_exceptions=True,
            )
            missing = [
                name
                for name, a in zip(rt.settings.peers, answers, strict=True)
                if not isinstance(a, ServiceData)
            ]
            if missing:
                return problem(
                    503,
                    "Service unavailable",
                    f"{', '.join(missing)} did not answer; ask again shortly",
                    slug="peer-unavailable",
                    headers={"Retry-After": "5"},
                )
            services.update(
                (name, a)
                for name, a in zip(rt.settings.peers, answers, strict=True)
                if isinstance(a, ServiceData)
            )
        erased = await rt.keyring.key_for_stream(ids[0]) is None
        body = SubjectData(
            customer_key=customer_key, complaint_ids=ids, erased=erased, services=services
        )
        return JSONResponse(jsonable_encoder(body))

    return r


async def _ask(
    client: httpx.AsyncClient,
    tracer: Tracer,
    peer: str,
    base: str,
    customer_key: str,
    authorization: str,
) -> ServiceData:
    """A peer's part, asked under a ``CLIENT`` span whose context the request carries: the
    peer's work is in the export's trace (the span names the path's template, not the key)."""
    url = httpx.URL(f"{base.rstrip('/')}{_PEER_PATH.format(customer_key=customer_key)}")
    span_attrs: dict[str, Any] = {
        "http.request.method": "GET",
        "url.template": _PEER_PATH,
        "server.address": url.host,
        "peer.service": peer,
    }
    if url.port is not None:
        span_attrs["server.port"] = url.port
    with tracer.start_as_current_span(
        f"GET {_PEER_PATH}",
        kind=SpanKind.CLIENT,
        attributes=span_attrs,
        record_exception=False,  # record_error: the type and a safe message only
        set_status_on_exception=False,
    ) as span:
        try:
            r = await client.get(
                url,
                params={"scope": "service"},
                headers={"Authorization": authorization, **inject_context(span)},
            )
        except Exception as exc:
            record_error(span, exc)
            raise
        record_status(span, r.status_code, failed_from=400)
    r.raise_for_status()
    parts = r.json()["services"]
    return ServiceData.model_validate(next(iter(parts.values())))
