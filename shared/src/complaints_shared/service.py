"""The service base: an app factory whose lifespan owns the pool, producer, relay and consumers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Message

from complaints_shared import customers, redrive
from complaints_shared.auth import Access, OidcVerifier, RateLimiter, check_declared, public
from complaints_shared.consumer import ConsumerRunner, Subscription, watch_generations
from complaints_shared.db import application_name, create_pool
from complaints_shared.eventstore import Clock, PostgresEventStore, Wakeup, unit_of_work, utc_now
from complaints_shared.faults import Backoff, is_transient, supervise
from complaints_shared.limits import RequestLimits
from complaints_shared.logs import configure_logging
from complaints_shared.metrics import ServiceMetrics
from complaints_shared.outbox import OutboxRelay, backlog, new_producer
from complaints_shared.policy import Policy, load_policy
from complaints_shared.privacy import KEYRING_SESSION, PostgresKeyring, load_master_key
from complaints_shared.problems import document_problems, install_problem_handlers, problem
from complaints_shared.retention import SHARED as SHARED_RETENTION
from complaints_shared.retention import Prune, run_pruning
from complaints_shared.schema import migrate, package_migrations, shared_migrations
from complaints_shared.settings import ServiceSettings
from complaints_shared.telemetry import (
    FASTAPI_TELEMETRY_OFF,
    ServerSpans,
    Telemetry,
    setup_telemetry,
)
from complaints_shared.topics import Topics, ensure_topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What request handlers and event handlers of one service share."""

    service: str
    settings: ServiceSettings
    policy: Policy
    pool: asyncpg.Pool
    keyring: PostgresKeyring
    store: PostgresEventStore
    producer: AIOKafkaProducer
    topics: Topics
    telemetry: Telemetry
    metrics: ServiceMetrics
    clock: Clock
    resources: Any = None  # what the service prepared at start (templates, rules, ...)
    wakeup: Wakeup | None = None  # of the outbox relay, after units of work that appended
    # the connections to the other services (``settings.peers``), kept while the service runs
    peers_http: httpx.AsyncClient | None = None

    def transaction(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """A unit of work: a pooled connection in a transaction; the relay learns of the
        events appended in it once it has ended."""
        return unit_of_work(self.pool, self.wakeup)


YOUNG_COLLECTION_THRESHOLD = 20_000
"""Net allocations between two collections of the youngest generation, in a service process
(see ``freeze_after_start``), unless its spec says otherwise; cycles of garbage still go, a
little later.  More makes each collection's pause longer, and the requests in flight wait
through it (intake's latency measured at both: docs/capacity.md, "Learning's rebuild")."""


@dataclass(frozen=True)
class ServiceSpec:
    """What makes one service: its name, own topic, schema, routes and subscriptions."""

    name: str
    title: str
    description: str
    default_port: int
    package: str
    own_topic: Callable[[Topics], str]
    routers: Sequence[APIRouter] = ()
    subscriptions: Callable[[Runtime], list[Subscription]] = lambda _: []
    prepare: Callable[[ServiceSettings, Policy], Any] | None = None  # validated at start
    # long-running jobs (each started again by a supervisor if it fails): ``partial(fn, rt)``
    background: Callable[[Runtime], list[Callable[[], Coroutine[Any, Any, None]]]] = lambda _: []
    openapi_tags: list[dict[str, Any]] = field(default_factory=list)
    subject_records: customers.Records | None = None  # read-model rows about a customer
    retention: Sequence[Prune] = ()  # the service's own tables pruned after policy periods
    # net allocations between two collections of the youngest generation once its process has
    # started (see ``create_app``'s ``freeze_after_start``): a service that answers people
    # keeps :data:`YOUNG_COLLECTION_THRESHOLD`; one whose work is long batches may take more
    young_collections_after: int = YOUNG_COLLECTION_THRESHOLD


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class BrokerLink:
    """Topics and the producer, brought up whenever the broker is reachable.

    A service starts without Kafka: its API and its writes (which only need PostgreSQL) work
    at once, the outbox keeps the events, and this task creates the topics and starts the
    producer when the broker comes; the relay and the consumers wait for it."""

    def __init__(self, settings: ServiceSettings, topics: Topics, producer: AIOKafkaProducer):
        self.settings = settings
        self.topics = topics
        self.producer = producer
        self.up = asyncio.Event()

    async def run(self) -> None:
        backoff = Backoff(initial=0.5, maximum=10.0)
        while not self.up.is_set():
            try:
                await ensure_topics(
                    self.settings.kafka_bootstrap,
                    self.topics.all(),
                    self.settings.topic_partitions,
                    self.settings.topic_replication_factor,
                )
                await self.producer.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("kafka unavailable (%s); starting without it", type(exc).__name__)
                await asyncio.sleep(backoff.next())
                continue
            self.up.set()
            log.info("kafka connected: topics ready, producer started")

    async def then(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``job`` once the broker link is up."""
        await self.up.wait()
        await job()


@dataclass
class _Background:
    link: BrokerLink
    relay: OutboxRelay
    consumers: list[ConsumerRunner]
    tasks: list[asyncio.Task[None]]
    # task → (error type, loop time) of its last restart
    failing: dict[str, tuple[str, float]] = field(default_factory=dict)

    def restarting(self, within: float = 60.0) -> dict[str, str]:
        """Tasks restarted after a failure within the last ``within`` seconds."""
        now = asyncio.get_running_loop().time()
        return {n: e for n, (e, at) in self.failing.items() if now - at < within}


def settle_after_start(young_collections_after: int = YOUNG_COLLECTION_THRESHOLD) -> None:
    """What a service process does once started (see ``create_app``'s ``freeze_after_start``):
    what start-up made is frozen, and the youngest generation is collected less often (after
    ``young_collections_after`` net allocations)."""
    gc.collect()  # what start-up left behind goes now, not frozen with the rest
    gc.freeze()
    gc.set_threshold(young_collections_after, *gc.get_threshold()[1:])


async def build_routes(app: FastAPI) -> None:
    """Have FastAPI build every route now, not for the request that first reaches it.

    FastAPI builds an included router's routes (their request and response models' validators)
    when a request first passes through that router: 16-52 ms a service, measured, paid by
    whichever request came first after each start (an operator's rebuild, a customer's survey
    answer).  One request that no route can answer builds them all: every route is tried for
    it, through the router alone (no middleware: no span, metric or log), with a method no
    route has, so that none is ever called (the answer, a 404 or 405, goes nowhere)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "OPTIONS",
        "scheme": "http",
        "path": "/-/routes",
        "raw_path": b"/-/routes",
        "root_path": "",
        "query_string": b"",
        "headers": [],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    await app.router(scope, receive, send)


def create_app(
    spec: ServiceSpec,
    settings: ServiceSettings | None = None,
    *,
    telemetry: Telemetry | None = None,
    clock: Clock = utc_now,
    freeze_after_start: bool = False,
) -> FastAPI:
    """Build one service's FastAPI app; nothing connects until the lifespan starts.

    ``freeze_after_start`` (a service process's own app, not an app among others in one
    process): once started, everything made so far (modules, models, the app, the pools) is
    moved out of the garbage collector's reach (:func:`gc.freeze`).  It lives as long as the
    process anyway, and under load every full collection walked all of it again: a pause of
    30-100 ms every few seconds.  The youngest generation is then collected after the spec's
    ``young_collections_after`` net allocations instead of Python's 700: a request's own
    objects are freed by reference counting when it ends, so at 700 the collector mostly
    walked live objects of requests in flight (about 4% of intake's CPU at saturation, none
    after)."""
    settings = settings or ServiceSettings()
    if settings.oidc_issuer is None:
        raise ValueError(
            "COMPLAINTS_OIDC_ISSUER is required: the issuer of the access tokens the API accepts"
        )
    telemetry = telemetry or setup_telemetry(spec.name)
    policy = load_policy(settings.policy)  # validated now: a bad file stops the start
    resources = spec.prepare(settings, policy) if spec.prepare else None
    topics = Topics(settings.topic_prefix)
    metrics = ServiceMetrics()
    dsn = settings.dsn_for(spec.name)
    password = settings.database_password()  # read at start: a missing file stops the start
    master_key = load_master_key(settings.master_key())
    keyring_dsn = settings.keyring_dsn()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        name = application_name(spec.name)
        pool = await create_pool(dsn, password=password, name=name)
        keyring_pool = None
        try:
            keyring_pool = await create_pool(
                keyring_dsn,
                max_size=5,
                password=password,
                name=name,
                session=KEYRING_SESSION,
            )
            keyring = PostgresKeyring(keyring_pool, master_key)
            await keyring.migrate()
            async with pool.acquire() as conn:
                await migrate(
                    conn, shared_migrations() + package_migrations(spec.package, spec.name)
                )
        except BaseException:
            if keyring_pool is not None:
                await keyring_pool.close()
            await pool.close()
            raise

        def service_producer() -> AIOKafkaProducer:
            return new_producer(settings.kafka_bootstrap, f"complaints-{spec.name}")

        producer = service_producer()
        link = BrokerLink(settings, topics, producer)
        wakeup = Wakeup(pool)
        store = PostgresEventStore(
            source=f"/complaints/{spec.name}",
            topic=spec.own_topic(topics),
            clock=clock,
            keyring=keyring,
        )
        runtime = Runtime(
            spec.name,
            settings,
            policy,
            pool,
            keyring,
            store,
            producer,
            topics,
            telemetry,
            metrics,
            clock,
            resources,
            wakeup,
            # made once: a client loads the TLS trust store when it is made (tens of ms)
            httpx.AsyncClient(timeout=10) if settings.peers else None,
        )
        relay = OutboxRelay(
            dsn=dsn,
            password=password,
            name=f"{name} relay",
            pool=pool,
            producer=producer,
            new_producer=service_producer,
            source=store.source,
            telemetry=telemetry,
            metrics=metrics,
            takeover_after=settings.outbox_takeover_seconds,
            wakeup=wakeup,
        )
        consumers = [
            ConsumerRunner(
                sub,
                settings.kafka_bootstrap,
                pool,
                producer,
                telemetry,
                metrics,
                dlq_topic=topics.dlq,
                keyring=keyring,
                wakeup=wakeup,
                fetch_wait_ms=settings.consumer_fetch_wait_ms,
            )
            for sub in spec.subscriptions(runtime)
        ]
        failing: dict[str, tuple[str, float]] = {}

        def restarted(name: str, exc: BaseException) -> None:
            failing[name] = (type(exc).__name__, asyncio.get_running_loop().time())
            metrics.background_restarts.labels(name).inc()

        def task(name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
            return asyncio.create_task(supervise(name, job, on_restart=restarted), name=name)

        jobs: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("kafka-link", link.run),
            ("outbox-relay", lambda: link.then(relay.run)),
            *((f"consumer-{c.subscription.name}", lambda c=c: link.then(c.run)) for c in consumers),
            # a rebuild in another process starts this one's consumers over at once (with no
            # consumers, the watch returns at once: a job that returns is done)
            ("generation-watch", lambda: watch_generations(relay.connect, consumers)),
            *((getattr(job, "func", job).__name__, job) for job in spec.background(runtime)),
            (
                "pruning",
                lambda: run_pruning(
                    pool, [*SHARED_RETENTION, *spec.retention], policy.retention, clock
                ),
            ),
        ]
        tasks = [task(name, job) for name, job in jobs]
        verifier: OidcVerifier = app.state.access.verifier
        verifier.refresh_soon()  # the issuer's keys, before the first request needs them
        await build_routes(app)  # before the first request needs them, too
        app.state.runtime = runtime
        app.state.background = _Background(link, relay, consumers, tasks, failing)
        log.info(
            "%s ready: database %s, kafka %s, topic %s",
            spec.name,
            dsn.rsplit("/", 1)[-1],
            settings.kafka_bootstrap,
            store.topic,
        )
        if freeze_after_start:
            settle_after_start(spec.young_collections_after)
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await verifier.aclose()
            if runtime.peers_http is not None:
                await runtime.peers_http.aclose()
            await producer.stop()  # also one never started: the broker did not come
            await keyring_pool.close()
            await pool.close()
            telemetry.provider.force_flush()

    app = FastAPI(
        title=spec.title,
        description=spec.description,
        version="0.1.0",
        lifespan=lifespan,
        openapi_tags=spec.openapi_tags,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    app.state.access = Access(
        OidcVerifier(settings.oidc_issuer, settings.oidc_audience, settings.oidc_roles_claim),
        public_submission=settings.public_submission,
        limiter=RateLimiter(settings.public_submission_per_minute),
    )
    install_problem_handlers(app)
    app.add_middleware(RequestLimits, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "Idempotency-Key"],
            expose_headers=["Location", "ETag", "Retry-After", "Idempotent-Replayed"],
            max_age=600,
        )
    app.include_router(_operations_router())
    for router in spec.routers:
        app.include_router(router)
    app.include_router(customers.router(spec.name, spec.subject_records))
    app.include_router(redrive.router(spec.name))
    check_declared(app)
    document_problems(app)
    # outermost of the app's own middleware: requests refused before routing have spans too
    app.add_middleware(ServerSpans, tracer=telemetry.tracer, routes=app.routes, metrics=metrics)
    return app


def _operations_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health/live", summary="The process is up", **public("probes"))
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/health/ready",
        summary="Whether this instance can serve requests, and what is degraded",
        description="200 when the database is reachable: the API and every write work. The body"
        " says `ok`, or `degraded` with the checks that are not (Kafka unreachable, events"
        " waiting in the outbox longer than the takeover time or parked for their size,"
        " consumers not assigned yet, background tasks restarted after a failure): events are"
        " then kept and published late. 503 when the database is unreachable.",
        **public("probes"),
    )
    async def ready(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        background: _Background = request.app.state.background
        database = await _check(_ping_database(runtime.pool))
        checks = {
            "database": database,
            "kafka": await _check(runtime.producer.client.fetch_all_metadata())
            if background.link.up.is_set()
            else "unavailable: not connected yet (topics and producer start when it is)",
            "outbox": await _outbox_check(runtime, background.relay)
            if database == "ok"
            else "unknown",
            "consumers": "ok"
            if all(c.assigned for c in background.consumers)
            else "joining their consumer groups",
            "background": ", ".join(
                f"{name} restarted after {error}"
                for name, error in sorted(background.restarting().items())
            )
            or "ok",
        }
        if database != "ok":
            return problem(
                503,
                "Not ready",
                "the database is unavailable",
                slug="not-ready",
                instance=request.url.path,
                headers={"Retry-After": "5"},
                checks=checks,
            )
        status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        return JSONResponse({"status": status, "checks": checks})

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,  # the text exposition format
        **public("scraped on the internal network"),
    )
    async def metrics(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


async def _ping_database(pool: asyncpg.Pool) -> None:
    async with pool.acquire(timeout=2) as conn:
        await conn.fetchval("SELECT 1")


async def _outbox_check(runtime: Runtime, relay: OutboxRelay) -> str:
    seen = await backlog(runtime.pool)
    runtime.metrics.outbox_pending.set(seen.pending)
    runtime.metrics.outbox_oldest_unsent.set(seen.oldest_seconds)
    runtime.metrics.outbox_parked.set(seen.parked)
    problems = []
    if seen.oldest_seconds >= relay.takeover_after:
        problems.append(
            f"stalled: {seen.pending} events waiting, the oldest for {seen.oldest_seconds:.0f}s"
        )
    if seen.parked:
        problems.append(f"{seen.parked} events parked: too large for the broker")
    return "; ".join(problems) or "ok"


async def _check(awaitable: Any) -> str:
    try:
        async with asyncio.timeout(3):  # not wait_for: see outbox.woken
            await awaitable
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


def run_service(spec: ServiceSpec) -> None:
    """Entry point of a service process: settings from the environment, uvicorn in front;
    with ``COMPLAINTS_WORKERS`` > 1, that many processes share the port, each a replica."""
    import uvicorn

    settings = ServiceSettings()
    configure_logging(spec.name, settings.log_level, settings.log_format)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port or spec.default_port,
        "log_level": settings.log_level.lower(),
        "log_config": None,  # keep the platform's handlers (JSON lines)
        "access_log": False,
    }
    with contextlib.suppress(KeyboardInterrupt):
        if settings.workers > 1:
            os.environ[_SPEC_VARIABLE] = f"{spec.package}.app:SPEC"
            uvicorn.run(
                f"{__name__}:app_from_environment",
                factory=True,
                workers=settings.workers,
                **options,
            )
        else:
            uvicorn.run(create_app(spec, settings, freeze_after_start=True), **options)


_SPEC_VARIABLE = "COMPLAINTS_SERVICE_SPEC"


def app_from_environment() -> FastAPI:
    """The app of one worker process (``COMPLAINTS_WORKERS`` > 1): the service named by
    ``run_service`` through the environment, its settings read again in this process."""
    module, _, name = os.environ[_SPEC_VARIABLE].partition(":")
    spec: ServiceSpec = getattr(importlib.import_module(module), name)
    settings = ServiceSettings()
    configure_logging(spec.name, settings.log_level, settings.log_format)
    return create_app(spec, settings, freeze_after_start=True)
