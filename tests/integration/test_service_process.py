"""What a service process does beyond its app: the set-up ``run_service`` and every uvicorn
worker (``app_from_environment``) give the app they build."""

from __future__ import annotations

import gc
from typing import Any

import fastapi.routing
import httpx
import pytest

from complaints_learning.app import SPEC
from complaints_shared import service
from complaints_shared.privacy import new_master_key
from complaints_shared.settings import ServiceSettings
from tests.support import serve

pytestmark = pytest.mark.integration


async def test_a_service_process_moves_what_it_started_with_out_of_the_collectors_reach(
    infrastructure, new_database, topic_prefix, monkeypatch
):
    """Once a process's own app has started, what start-up made (modules, models, the app)
    is frozen: full collections under load no longer walk it (they took 90-100 ms every few
    seconds in intake at saturation).  An app started among others in one process, as in
    this suite, freezes nothing and keeps Python's collection thresholds."""
    for name, value in {
        "COMPLAINTS_SERVICE_SPEC": "complaints_learning.app:SPEC",
        "COMPLAINTS_OIDC_ISSUER": infrastructure.oidc_issuer,
        "COMPLAINTS_KAFKA_BOOTSTRAP": infrastructure.kafka_bootstrap,
        "COMPLAINTS_DATABASE_URL": await new_database(),
        "COMPLAINTS_KEYRING_URL": await new_database(),
        "COMPLAINTS_KEYRING_MASTER_KEY": new_master_key(),
        "COMPLAINTS_TOPIC_PREFIX": topic_prefix,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(service, "configure_logging", lambda *args: None)  # the suite's stays
    assert gc.get_freeze_count() == 0  # the apps of the earlier tests froze nothing
    thresholds = gc.get_threshold()
    assert thresholds[0] < service.YOUNG_COLLECTION_THRESHOLD < SPEC.young_collections_after
    running = await serve(service.app_from_environment())
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{running.url}/health/live")).status_code == 200
        assert gc.get_freeze_count() > 10_000
        # the youngest generation is collected less often, as learning's spec says (its work is
        # long batches); the older ones as before
        assert gc.get_threshold() == (SPEC.young_collections_after, *thresholds[1:])
    finally:
        await running.stop()
        gc.unfreeze()  # the rest of the suite runs as before
        gc.set_threshold(*thresholds)


async def test_a_started_service_builds_no_route_for_its_first_requests(
    start_platform, http: httpx.AsyncClient, monkeypatch
):
    """FastAPI builds an included router's routes (their models' validators) when a request
    first passes through it: 16-52 ms a service, which the first request after every start
    waited for.  A service builds them as it starts: its first requests build nothing."""
    built: list[str] = []
    create_model_field = fastapi.routing.create_model_field

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(kwargs.get("name", args[0] if args else "?"))
        return create_model_field(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "create_model_field", counted)
    # what is measured is FastAPI's own: an app that has not started builds on its first request
    unstarted = service.create_app(
        SPEC,
        ServiceSettings(
            oidc_issuer="http://127.0.0.1:9/realms/unused", keyring_master_key=new_master_key()
        ),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(unstarted)) as client:
        assert (await client.get("http://learning/problems")).status_code == 401
    assert built, "FastAPI builds routes on a request no more: this test measures nothing"

    platform = await start_platform("learning")
    built.clear()
    base = platform.url("learning")
    for path in ("/problems", "/insights/categories", "/insights/top"):
        assert (await http.get(f"{base}{path}")).status_code == 200, path
    assert built == []
