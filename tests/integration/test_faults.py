"""The services when their infrastructure fails: the database cut off, the broker absent at
start.  The network to the real servers is cut with a TCP proxy; nothing is faked."""

from __future__ import annotations

import gc
import urllib.parse
import warnings
import weakref
from pathlib import Path

import httpx
import pytest

from complaints_intake.app import SPEC as INTAKE
from complaints_shared.privacy import new_master_key
from complaints_shared.service import create_app
from complaints_shared.settings import ServiceSettings
from tests.integration.conftest import StartPlatform
from tests.integration.test_intake import complaint
from tests.support import TcpProxy, behind, eventually, free_port, serve, server_password

pytestmark = pytest.mark.integration


def password_file(tmp_path: Path) -> dict[str, Path]:
    """The server's password as a secret file (the PGPASSFILE entry names the real port)."""
    password = server_password()
    if password is None:
        return {}
    secret = tmp_path / "db-password"
    secret.write_text(password)
    return {"database_password_file": secret}


async def test_with_the_database_down_writes_answer_503_problem_and_work_again_after(
    start_platform: StartPlatform, new_database, http: httpx.AsyncClient, tmp_path: Path
):
    dsns = {"intake": await new_database(), "resolution": await new_database()}
    ports = {n: urllib.parse.urlsplit(d).port for n, d in dsns.items()}
    proxies = {n: await TcpProxy("127.0.0.1", ports[n] or 5432).restore() for n in dsns}
    p = await start_platform(
        "resolution",
        "intake",
        **{f"{n}_database_url": behind(proxies[n], d) for n, d in dsns.items()},
        **password_file(tmp_path),
    )
    try:
        first = await http.post(f"{p.url('intake')}/complaints", json=complaint())
        assert first.status_code == 201, first.text
        cid = first.json()["complaint_id"]

        for proxy in proxies.values():
            await proxy.cut()
        down = await http.post(
            f"{p.url('intake')}/complaints",
            json=complaint(),
            headers={"Idempotency-Key": "while-down-1"},
        )
        assert down.status_code == 503, down.text
        assert down.headers["content-type"] == "application/problem+json"
        assert down.headers["retry-after"] == "5"
        body = down.json()
        assert body["status"] == 503 and body["instance"] == "/complaints"
        assert "Internal" not in down.text
        case = await http.get(f"{p.url('resolution')}/cases/{cid}")
        assert case.status_code == 503 and case.headers["retry-after"] == "5"
        assert case.headers["content-type"] == "application/problem+json"
        ready = await http.get(f"{p.url('intake')}/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("unavailable")

        for proxy in proxies.values():
            await proxy.restore()

        async def accepted() -> httpx.Response | None:
            r = await http.post(
                f"{p.url('intake')}/complaints",
                json=complaint(),
                headers={"Idempotency-Key": "while-down-1"},
            )
            return r if r.status_code == 201 else None

        again = await eventually(accepted, what="intake to take complaints again")
        listed = await http.get(f"{p.url('intake')}/complaints")
        # the retried request took effect once: the failed try changed nothing
        assert {c["complaint_id"] for c in listed.json()["items"]} == {
            cid,
            again.json()["complaint_id"],
        }
    finally:
        for proxy in proxies.values():
            await proxy.restore() if proxy._server is None else None


async def test_intake_starts_and_takes_complaints_while_kafka_is_down_and_publishes_later(
    start_platform: StartPlatform, infrastructure, http: httpx.AsyncClient
):
    host, port = infrastructure.kafka_bootstrap.rsplit(":", 1)
    broker = TcpProxy(host, int(port), port=free_port())  # not listening yet: no broker
    p = await start_platform("intake", kafka_bootstrap=f"127.0.0.1:{broker.port}")
    try:
        ready = await http.get(f"{p.url('intake')}/health/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["kafka"].startswith("unavailable")
        created = await http.post(f"{p.url('intake')}/complaints", json=complaint())
        assert created.status_code == 201, created.text

        await broker.restore()  # the broker comes back

        async def ok() -> bool:
            r = await http.get(f"{p.url('intake')}/health/ready")
            return r.json()["status"] == "ok"

        await eventually(ok, timeout=60, what="intake to connect to the broker")
        events = await p.topic_events("complaints.intake.v2", 2)
        assert {e.type for e in events} >= {"ComplaintReceived"}
        assert all(
            e.stream_id.hex == created.json()["complaint_id"].replace("-", "") for e in events
        )
    finally:
        await broker.cut()


async def test_a_service_stopped_before_the_broker_came_closes_its_kafka_client(
    infrastructure, new_database, topic_prefix
):
    """A service that stops while the broker is still away leaves no Kafka client open: the
    client's finaliser would log an error ("Unclosed AIOKafkaProducer") when it is collected."""
    settings = ServiceSettings(
        oidc_issuer=infrastructure.oidc_issuer,
        topic_prefix=topic_prefix,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",  # nobody listens: no broker
        database_url=await new_database(),
        keyring_url=await new_database(),
        keyring_master_key=new_master_key(),
    )
    with warnings.catch_warnings():  # what earlier tests left to the collector goes first
        warnings.simplefilter("ignore")
        gc.collect()
    server = await serve(create_app(INTAKE, settings))
    producer = weakref.ref(server.app.state.runtime.producer)
    its_id = id(server.app.state.runtime.producer)
    await server.stop()
    del server
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert producer() is None  # collected: its finaliser ran
    # its own warning (the finaliser names the client as the warning's source), whatever
    # another test's leftovers may say meanwhile
    assert [str(w.message) for w in caught if id(w.source) == its_id] == []


async def test_dead_letters_are_listed_and_replayed_by_admins_only(
    start_platform: StartPlatform, http: httpx.AsyncClient, tokens
):
    p = await start_platform("followup")
    base = f"{p.url('followup')}/admin/dead-letters"
    listed = await http.get(base)
    assert listed.status_code == 200 and listed.json() == {"items": []}
    replayed = await http.post(f"{base}/replay")
    assert replayed.json() == {"replayed": 0, "taken_in": 0, "still_parked": 0}
    unknown = await http.post(f"{base}/replay", json={"consumer": "nobody"})
    assert unknown.status_code == 404
    agent = await http.get(base, headers=await tokens.headers("agent"))
    assert agent.status_code == 403
