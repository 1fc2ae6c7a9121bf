"""Schemathesis over every service's OpenAPI, with a valid token (the tester holds every staff
role): generated requests, valid and invalid, never get a 5xx, and every answer matches the
schema the operation documents (status code, content type, body)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import SPECS, StartPlatform

pytestmark = pytest.mark.integration

EXAMPLES = 8  # per operation and generation mode: a bounded run for every CI build
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fuzz(base_url: str, spec: dict[str, Any], headers: dict[str, str]) -> tuple[int, list[str]]:
    """Run every operation; return how many calls were made and the failures found."""
    schema = schemathesis.openapi.from_dict(spec)
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                response = case.call(base_url=base_url, headers=headers, timeout=30)
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                continue  # nothing to get wrong in it (no parameters, no body)
            except (Exception, BaseExceptionGroup) as exc:  # collected: one run reports all
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
    return calls, failures


# The services run in this process's event loop while the cases are drawn in a worker thread,
# and they draw from the global ``random`` (OpenTelemetry's span ids, aiokafka's choice of node
# and order of partitions): Hypothesis, comparing the global state before and after each draw,
# takes that for a strategy using it and warns.  With both given a ``random.Random`` of their
# own, the warning did not come.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
@pytest.mark.parametrize("service", sorted(SPECS))
async def test_generated_requests_get_no_5xx_and_answers_match_the_openapi(
    start_platform: StartPlatform, http, service: str
):
    p = await start_platform(service)
    url = p.url(service)
    spec = (await http.get(f"{url}/openapi.json")).json()
    headers = {"Authorization": http.headers["Authorization"]}
    calls, failures = await asyncio.to_thread(fuzz, url, spec, headers)
    assert calls >= len(spec["paths"]) * EXAMPLES, calls  # it did reach every operation
    assert not failures, "\n\n".join(failures)
