"""RFC 9457 problem details for every error answer."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from complaints_shared.errors import (
    CommandRejected,
    ConcurrencyConflict,
    Forbidden,
    Gone,
    InputRejected,
    NotFound,
    TooManyRequests,
    Unauthenticated,
)
from complaints_shared.faults import database_unavailable, lost_race
from complaints_shared.telemetry import route_template

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 5
_LOST_RACE = (
    409,
    "Concurrent modification",
    "a concurrent change got in the way; nothing was changed, retry the request",
    "concurrency-conflict",
    1,
)
_UNAVAILABLE = (
    503,
    "Service unavailable",
    "the database is unavailable; nothing was changed, retry later",
    "unavailable",
    RETRY_AFTER_SECONDS,
)
TYPE_BASE = "urn:complaints:problem:"


class Problem(BaseModel):
    """An RFC 9457 problem; extension members are allowed."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    slug: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = Problem(
        type=f"{TYPE_BASE}{slug}" if slug else "about:blank",
        title=title,
        status=status,
        detail=detail,
        instance=instance,
        **extensions,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in {
        401: "No valid bearer token (WWW-Authenticate: Bearer)",
        403: "The token lacks a role this needs, or the actor lacks the authority",
        400: "The body cannot be read: not JSON, or not UTF-8",
        404: "Not found",
        409: "Conflict",
        422: "Invalid input",
        503: "The database is unavailable for now: retry after `Retry-After` seconds",
    }.items()
}


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error as problem+json."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(tuple(e["loc"])), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        fields = ", ".join(sorted({e["field"] for e in errors}))
        return problem(
            422,
            "Invalid request",
            f"invalid fields: {fields}",
            slug="validation",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        from http import HTTPStatus

        title = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
        return problem(
            exc.status_code,
            title,
            detail,
            # the framework's one 400: a body that is no JSON text (say, not UTF-8)
            slug="malformed-body" if exc.status_code == 400 else None,
            instance=request.url.path,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return problem(
            404,
            f"{exc.what.capitalize()} not found",
            str(exc),
            slug="not-found",
            instance=request.url.path,
        )

    @app.exception_handler(ConcurrencyConflict)
    async def _conflict(request: Request, exc: ConcurrencyConflict) -> JSONResponse:
        return problem(
            409,
            "Concurrent modification",
            "another request changed this resource first; reload and try again",
            slug="concurrency-conflict",
            instance=request.url.path,
            expected_version=exc.expected_version,
            current_version=exc.actual_version,
        )

    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(request: Request, exc: Unauthenticated) -> JSONResponse:
        return problem(
            401,
            "Authentication required",
            exc.reason,
            slug="unauthenticated",
            instance=request.url.path,
            headers={"WWW-Authenticate": exc.challenge},
        )

    @app.exception_handler(TooManyRequests)
    async def _too_many(request: Request, exc: TooManyRequests) -> JSONResponse:
        return problem(
            429,
            "Too many requests",
            str(exc),
            slug="too-many-requests",
            instance=request.url.path,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(CommandRejected)
    async def _rejected(request: Request, exc: CommandRejected) -> JSONResponse:
        return problem(
            409,
            "Command not allowed in this state",
            str(exc),
            slug="invalid-state",
            instance=request.url.path,
            state=exc.state,
            command=exc.command,
            allowed_commands=exc.allowed,
        )

    @app.exception_handler(InputRejected)
    async def _input_rejected(request: Request, exc: InputRejected) -> JSONResponse:
        return problem(
            422,
            "Invalid request",
            f"invalid fields: {exc.field}",
            slug="validation",
            instance=request.url.path,
            errors=[{"field": exc.field, "message": exc.message, **exc.details}],
        )

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return problem(403, "Not allowed", str(exc), slug="forbidden", instance=request.url.path)

    @app.exception_handler(Gone)
    async def _gone(request: Request, exc: Gone) -> JSONResponse:
        return problem(410, "Gone", str(exc), slug="gone", instance=request.url.path)

    async def _infrastructure(request: Request, exc: Exception) -> JSONResponse:
        """A failure of the infrastructure, not of the request: nothing was changed (the
        transaction rolled back), so the client may retry the same request."""
        if lost_race(exc):
            status, title, detail, slug, retry = _LOST_RACE
        elif database_unavailable(exc):
            status, title, detail, slug, retry = _UNAVAILABLE
        else:
            return _internal(request, exc)
        log.warning("%s: %s (%s)", _logged(request), slug, type(exc).__name__)
        return problem(
            status,
            title,
            detail,
            slug=slug,
            instance=request.url.path,
            headers={"Retry-After": str(retry)},
        )

    for kind in (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
        app.add_exception_handler(kind, _infrastructure)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal(request, exc)

    app.add_middleware(ContainUnexpectedErrors)


class ContainUnexpectedErrors:
    """An error no handler took is answered here with the 500 problem (its type logged) and
    goes no further.  Starlette's outermost middleware would answer it too, but then raises it
    again for the server to log: the tracing middleware and the server would record its text
    and traceback, and a driver's or library's message may quote the values it choked on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            response = _internal(Request(scope), exc)
            if not started:  # else the answer is half sent: the server closes the connection
                await response(scope, receive, send)


def _logged(request: Request) -> str:
    """A request as a log line names it: its method and route template, never its path (a
    survey link's token is the customer's credential; a customer's key is theirs)."""
    return f"{request.method} {route_template(request.app.routes, request.scope)}"


def _internal(request: Request, exc: Exception) -> JSONResponse:
    # only the type: a driver's message can quote the values it choked on
    log.error("%s failed: %s", _logged(request), type(exc).__name__)
    return problem(
        500,
        "Internal error",
        "the request failed on our side; it has been logged",
        slug="internal",
        instance=request.url.path,
    )


def document_problems(app: FastAPI) -> None:
    """Make the OpenAPI list every problem an operation can answer, by what it has: 401 and
    403 where a role is needed, 400 and 413 where it takes a body, 422 where it takes input,
    404 where its path names something, 503 unless it is public (health, metrics, survey
    links document their own)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault(
            "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        ref = {"$ref": "#/components/schemas/Problem"}
        for operations in schema.get("paths", {}).values():
            for op in operations.values():
                params = op.get("parameters", [])
                wanted: list[int] = []
                if "x-roles" in op:
                    wanted += [401, 403, 503]
                if "requestBody" in op:
                    wanted += [400, 413, 422]
                if params:
                    wanted.append(422)
                if any(p.get("in") == "path" for p in params):
                    wanted.append(404)
                responses = op.setdefault("responses", {})
                for code in wanted:
                    responses.setdefault(
                        str(code),
                        {
                            "description": _DESCRIPTIONS[code],
                            "content": {PROBLEM_JSON: {"schema": ref}},
                        },
                    )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_DESCRIPTIONS = {
    code: spec["description"] for code, spec in PROBLEM_RESPONSES.items() if isinstance(code, int)
} | {413: "The request body is larger than the service accepts"}
