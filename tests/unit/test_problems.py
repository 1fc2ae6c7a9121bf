"""Failures of the infrastructure answered as problem+json, never as a bare 500."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from complaints_shared.problems import install_problem_handlers


async def post_to_app_raising(exc: BaseException) -> httpx.Response:
    """``POST /things`` to an app whose handler raises ``exc`` (as the services' clients get
    the answer: an error that escapes the app would fail the call instead)."""
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/things")
    async def fail() -> None:
        raise exc

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        return await client.post("/things")


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ConnectionRefusedError(), 503),
        (asyncpg.CannotConnectNowError("the database system is starting up"), 503),
        (asyncpg.AdminShutdownError("terminating connection"), 503),
        (asyncpg.DiskFullError("could not extend file"), 503),
        (asyncpg.DeadlockDetectedError("deadlock detected"), 409),
        (asyncpg.SerializationError("could not serialize access"), 409),
        (asyncpg.UniqueViolationError("duplicate key value (ana@example.org)"), 500),
        (ValueError("secret value ana@example.org"), 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
async def test_infrastructure_failures_are_problems(exc: BaseException, status: int) -> None:
    r = await post_to_app_raising(exc)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["instance"] == "/things"
    assert "ana@example.org" not in r.text  # a driver's message never reaches the client
    if status in (503, 409):
        assert int(r.headers["retry-after"]) > 0
