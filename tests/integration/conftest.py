"""Services running in-process over real HTTP, each with its own database and topic prefix."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from complaints_followup.app import SPEC as FOLLOWUP
from complaints_intake.app import SPEC as INTAKE
from complaints_learning.app import SPEC as LEARNING
from complaints_resolution.app import SPEC as RESOLUTION
from complaints_shared.envelope import Event
from complaints_shared.eventstore import Clock, utc_now
from complaints_shared.privacy import new_master_key
from complaints_shared.service import ServiceSpec, create_app
from complaints_shared.settings import ServiceSettings
from complaints_shared.telemetry import setup_telemetry
from tests.support import (
    Gateway,
    Inbox,
    RunningServer,
    Tokens,
    free_port,
    migrated_pool,
    open_records,
    read_topic,
    self_signed_certificate,
    serve,
)

SPECS = {s.name: s for s in (INTAKE, RESOLUTION, FOLLOWUP, LEARNING)}


@dataclass
class Platform:
    servers: dict[str, RunningServer]
    spans: InMemorySpanExporter
    prefix: str
    keyring: dict[str, str]  # the keyring settings the services share

    def url(self, service: str) -> str:
        return self.servers[service].url

    def pool(self, service: str):  # type: ignore[no-untyped-def]
        return self.servers[service].app.state.runtime.pool

    async def topic_events(self, topic: str, count: int) -> list[Event[Any]]:
        """The first ``count`` events on ``topic`` (``complaints.intake.v2``), opened with the
        services' keyring."""
        runtime = next(iter(self.servers.values())).app.state.runtime
        records = await read_topic(
            runtime.settings.kafka_bootstrap, f"{self.prefix}{topic}", count=count
        )
        return await open_records(runtime.keyring, records)


StartPlatform = Callable[..., Awaitable[Platform]]


@pytest.fixture
async def start_platform(
    infrastructure, new_database, topic_prefix
) -> AsyncIterator[StartPlatform]:
    """Start some or all services: ``await start_platform("intake", policy=path, clock=f)``;
    other keywords are settings of every service started (``kafka_bootstrap=...``)."""
    started: list[RunningServer] = []

    async def start(
        *names: str, policy: Path | None = None, clock: Clock = utc_now, **settings: object
    ) -> Platform:
        spans = InMemorySpanExporter()
        servers: dict[str, RunningServer] = {}
        keyring = {
            "keyring_url": await new_database(),  # one keyring for the services started together
            "keyring_master_key": new_master_key(),
        }
        wanted = names or tuple(SPECS)
        # ``intake_database_url=...``: that service's database, e.g. behind a TcpProxy
        databases = {
            n: settings.pop(f"{n}_database_url") for n in SPECS if f"{n}_database_url" in settings
        }
        # ``ports={"followup": 8123}``: where a service listens (say, for its public URL)
        ports: dict[str, int] = settings.pop("ports", {})  # type: ignore[assignment]
        # intake last: it answers subject access requests for the services started with it
        for name in sorted(wanted, key=lambda n: n == "intake"):
            spec: ServiceSpec = SPECS[name]
            peers = {n: srv.url for n, srv in servers.items()} if name == "intake" else {}
            config = ServiceSettings(
                oidc_issuer=infrastructure.oidc_issuer,
                topic_prefix=topic_prefix,
                policy=policy,
                **{
                    "kafka_bootstrap": infrastructure.kafka_bootstrap,
                    "database_url": databases.get(name) or await new_database(),
                    "topic_partitions": 3,
                    "peers": peers,
                    **keyring,
                    **settings,
                },
            )
            app = create_app(spec, config, telemetry=setup_telemetry(name, spans), clock=clock)
            servers[name] = await serve(app, ports.get(name))
            started.append(servers[name])
        return Platform(servers, spans, topic_prefix, keyring)

    yield start
    await asyncio.gather(*(s.stop() for s in started))


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    """A real HTTP message gateway on a free port, and the URL to post messages to."""
    g = Gateway()
    server = await serve(g.app)
    yield g, f"{server.url}/messages"
    await server.stop()


@pytest.fixture
async def gateway_tls(tmp_path: Path) -> AsyncIterator[tuple[Gateway, str, Path]]:
    """A real HTTP message gateway over TLS, with a certificate of its own authority (not
    trusted unless ``SSL_CERT_FILE`` names the file given), and the URL to post to."""
    cert, key = self_signed_certificate(tmp_path)
    g = Gateway()
    server = await serve(g.app, ssl_certfile=str(cert), ssl_keyfile=str(key))
    yield g, f"{server.url}/messages", cert
    await server.stop()


@pytest.fixture
def smtp_tls(tmp_path: Path) -> Iterator[tuple[Inbox, int, Path]]:
    """A real SMTP server on a free port that takes mail only after STARTTLS, with a
    certificate of its own authority (not trusted unless ``SSL_CERT_FILE`` names the file
    given)."""
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox, port = Inbox(), free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True
    )
    controller.start()
    yield inbox, port, cert
    controller.stop()


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server on a free port (aiosmtpd); what it accepts is also spooled to the
    Maildir ``inbox.spool``, as the local mail catcher's."""
    inbox, port = Inbox(tmp_path / "maildir"), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def followup_policy(tmp_path: Path) -> Path:
    """Every hour a business hour, follow-up after three days, timers polled often."""
    p = tmp_path / "policy.toml"
    p.write_text("""
[calendar]
always_open = true
[followup]
satisfaction_check_delay = "P3D"
response_period = "P14D"
reminder_after = "P7D"
delivery_retry = "PT10S"
timer_poll = "PT0.05S"
[resolution]
timer_poll = "PT0.05S"
""")
    return p


@pytest.fixture(scope="session")
def tokens(infrastructure) -> Tokens:  # type: ignore[no-untyped-def]
    """Tokens of the local realm: ``await tokens.headers("supervisor")``; by default the test
    run's own ``tester`` who has every staff role."""
    return Tokens(infrastructure.keycloak)


@pytest.fixture
async def http(tokens: Tokens) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that calls as the ``tester`` (every staff role); pass other headers
    (``await tokens.headers("agent")``) to call as someone else."""
    async with httpx.AsyncClient(timeout=30, headers=await tokens.headers()) as client:
        yield client


@pytest.fixture
async def platform(start_platform: StartPlatform) -> Platform:
    return await start_platform()


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database with the event store schema and an ``effects`` table."""
    pool = await migrated_pool(database)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE effects (event_id uuid, n int)")
    yield pool
    await pool.close()


@pytest.fixture
async def producer(infrastructure) -> AsyncIterator[AIOKafkaProducer]:  # type: ignore[no-untyped-def]
    p = AIOKafkaProducer(
        bootstrap_servers=infrastructure.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await p.start()
    yield p
    await p.stop()
