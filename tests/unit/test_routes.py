"""Every route of every service runs on the event loop: its endpoint and each of its
dependencies are coroutines.  FastAPI runs a plain function (``def``) in its thread pool, a
thread hand-over for every request that costs CPU and about a millisecond of latency."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase

from complaints_followup.api import ROUTERS as FOLLOWUP
from complaints_intake.api import ROUTERS as INTAKE
from complaints_learning.api import ROUTERS as LEARNING
from complaints_resolution.api import ROUTERS as RESOLUTION
from complaints_shared.service import _operations_router

SERVICES = {
    "intake": INTAKE,
    "resolution": RESOLUTION,
    "followup": FOLLOWUP,
    "learning": LEARNING,
    "operations": [_operations_router()],
}


def _runs_on_the_loop(call: Any) -> bool:
    if inspect.iscoroutinefunction(call):
        return True
    if isinstance(call, SecurityBase) or inspect.isclass(call):
        return True  # security schemes are awaited; a class is only instantiated
    return inspect.iscoroutinefunction(getattr(call, "__call__", None))  # noqa: B004


def _threaded(dependant: Dependant, where: str) -> list[str]:
    found = [] if dependant.call is None or _runs_on_the_loop(dependant.call) else [where]
    for sub in dependant.dependencies:
        name = getattr(sub.call, "__qualname__", type(sub.call).__qualname__)
        found += _threaded(sub, f"{where} <- {name}")
    return found


@pytest.mark.parametrize("service", list(SERVICES))
def test_no_route_hands_requests_to_the_thread_pool(service: str):
    threaded = [
        hit
        for router in SERVICES[service]
        for route in router.routes
        if isinstance(route, APIRoute)
        for hit in _threaded(route.dependant, f"{sorted(route.methods)} {route.path}")
    ]
    assert threaded == []
