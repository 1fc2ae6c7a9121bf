"""Helpers for integration tests: polling, reading topics, running services in-process."""

from __future__ import annotations

import asyncio
import itertools
import json
import mailbox
import os
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import uvicorn
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Request, Response

from complaints_shared.db import create_pool
from complaints_shared.envelope import (
    Event,
    cloudevent_headers,
    decode_value,
    event_from_data,
    event_type_of,
)
from complaints_shared.privacy import SEALED_PREFIX, Keyring, open_payloads
from complaints_shared.schema import migrate, shared_migrations

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 30.0, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def read_topic(
    bootstrap: str, topic: str, *, count: int, timeout: float = 30.0
) -> list[ConsumerRecord]:
    """Read ``topic`` from the beginning until ``count`` records arrived (or fail)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    deadline = time.monotonic() + timeout
    try:  # bounded, so that a client that hangs fails the test with where it hung
        async with asyncio.timeout(timeout):
            await consumer.start()
    except TimeoutError:
        raise AssertionError(f"{topic}: the reading consumer did not start in {timeout}s") from None
    records: list[ConsumerRecord] = []
    try:
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
    finally:
        try:
            async with asyncio.timeout(10):
                await consumer.stop()
        except TimeoutError:
            raise AssertionError(f"{topic}: the reading consumer did not stop in 10s") from None
    if len(records) < count:
        raise AssertionError(f"{topic}: {len(records)} records after {timeout}s, wanted {count}")
    return records


async def open_records(keyring: Keyring, records: list[ConsumerRecord]) -> list[Event[Any]]:
    """The events of topic records, their personal values opened as a service would."""
    items = []
    for r in records:
        h = cloudevent_headers(r.headers)
        items.append((h, event_type_of(h), decode_value(r.value)))
    await open_payloads(keyring, [(t, d) for _, t, d in items])
    return [event_from_data(d, h) for h, _, d in items]


_SEALED = re.compile(re.escape(SEALED_PREFIX) + r"[A-Za-z0-9_-]+:[A-Za-z0-9_=-]+")


def unsealed_text(stored: str) -> str:
    """What of ``stored`` is readable without a key: each sealed value replaced by a marker.
    A short plain value searched in ciphertext matches its random letters now and then
    (``Eva`` in base64url: a few runs in a thousand); searched here it cannot."""
    return _SEALED.sub("<sealed>", stored)


async def plan_once_grown(
    conn: asyncpg.Connection,
    statement: str,
    argument: str,
    grow: Callable[[], Awaitable[None]],
) -> str:
    """The plan ``conn`` runs ``statement`` (one parameter, ``argument``, an SQL literal) with
    after its table grew: prepared and run while the table is small (often enough for
    PostgreSQL to settle on a plan kept for any later call), then ``grow`` fills the table, and
    no ``ANALYZE`` runs meanwhile (as before autovacuum comes round)."""
    await conn.execute(f"PREPARE grown AS {statement}")
    try:
        for _ in range(8):
            await conn.execute(f"EXECUTE grown({argument})")
        await grow()
        rows = await conn.fetch(f"EXPLAIN EXECUTE grown({argument})")
        return "\n".join(r[0] for r in rows)
    finally:
        await conn.execute("DEALLOCATE grown")


async def plans_made(conn: asyncpg.Connection, statement: str) -> tuple[int, int]:
    """How ``conn`` ran ``statement`` (prepared by the driver, as every statement it runs):
    (calls with its generic plan, made once and kept; calls planned for their parameters)."""
    row = await conn.fetchrow(
        "SELECT coalesce(sum(generic_plans), 0)::int AS generic,"
        " coalesce(sum(custom_plans), 0)::int AS custom"
        " FROM pg_prepared_statements WHERE statement = $1",
        statement,
    )
    assert row is not None
    return row["generic"], row["custom"]


async def migrated_pool(dsn: str, password: str | None = None) -> asyncpg.Pool:
    pool = await create_pool(dsn, max_size=20, password=password)
    async with pool.acquire() as conn:
        await migrate(conn, shared_migrations())
    return pool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningServer:
    app: FastAPI
    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        scheme = "https" if self.server.config.ssl_certfile else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)


async def serve(app: FastAPI, port: int | None = None, **config: Any) -> RunningServer:
    """Run ``app`` under uvicorn on a free loopback port (or ``port``), lifespan included;
    ``config``: more of uvicorn's settings (``ssl_certfile``, say)."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **config
        )
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 60
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start within 60s")
        await asyncio.sleep(0.05)
    return RunningServer(app, port, server, task)


async def topic_size(bootstrap: str, topic: str) -> int:
    """How many records a topic holds (sum of end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return sum(ends.values())
    finally:
        await consumer.stop()


AGENT = {"id": "agent-7", "name": "Rita Lopes", "contact": "+351 210 000 007"}


async def drive_to_agreed(
    http: Any, resolution_url: str, complaint_id: str, deadline: str = "2099-01-01T12:00:00+00:00"
) -> dict[str, Any]:
    """Assign, identify the cause, propose and agree a solution over HTTP."""
    base = f"{resolution_url}/cases/{complaint_id}"
    steps = [
        ("assign", {"owner": AGENT}),
        (
            "cause",
            {
                "what_happened": "The shelf label was old",
                "what_should_have_happened": "Labels change with prices",
                "what_went_wrong": "The label run was skipped",
                "root_cause": "process",
                "responsible": "us",
            },
        ),
        (
            "proposals",
            {
                "options": [
                    {
                        "remedy": "refund",
                        "description": "Refund the difference",
                        "amount": "0.50",
                        "currency": "EUR",
                    },
                    {"remedy": "apology", "description": "A written apology"},
                ],
            },
        ),
        (
            "agreement",
            {
                "option_id": 1,
                "agreed_outcome": "The difference is refunded",
                "indicators": ["refund visible on the card statement"],
                "deadline": deadline,
            },
        ),
    ]
    case: dict[str, Any] = {}
    for path, body in steps:
        r = await http.post(f"{base}/{path}", json=body)
        assert r.status_code == 200, (path, r.text)
        case = r.json()
    return case


async def resolve_case(
    http: Any, resolution_url: str, complaint_id: str, summary: str = "Refunded the difference"
) -> dict[str, Any]:
    """Drive a case from opened to resolved over HTTP."""
    await drive_to_agreed(http, resolution_url, complaint_id)
    r = await http.post(
        f"{resolution_url}/cases/{complaint_id}/resolve",
        json={"summary": summary},
    )
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


class ManualClock:
    """A clock the test moves: ``clock()`` is now, ``clock.advance(delta)`` moves it."""

    def __init__(self, start: Any) -> None:
        self.now = start

    def __call__(self) -> Any:
        return self.now

    def advance(self, delta: Any) -> None:
        self.now = self.now + delta


async def await_case(http: Any, resolution_url: str, complaint_id: str) -> None:
    """Wait until resolution has opened the complaint's case (from ComplaintReceived)."""

    async def opened() -> bool:
        r = await http.get(f"{resolution_url}/cases/{complaint_id}")
        return bool(r.status_code == 200)

    await eventually(opened, what="the case to open")


TESTER = "tester"
TESTER_ROLES = ("manager", "analyst", "quality", "admin", "privacy")


class Tokens:
    """Access tokens of the local realm's users and service accounts, cached until shortly
    before they expire.  ``tester`` is a user of the test run's own with every staff role."""

    def __init__(self, keycloak: Any) -> None:
        self.keycloak = keycloak
        self._cache: dict[str, tuple[str, float]] = {}
        self._tester_password = f"t-{uuid.uuid4().hex}"
        self._tester_ready = False
        self._lock = threading.Lock()

    async def get(self, user: str = TESTER) -> str:
        cached = self._cache.get(user)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return await asyncio.to_thread(self._fetch, user)

    def _fetch(self, user: str) -> str:
        """A fresh token, one caller at a time (concurrent first calls would each create the
        tester, and all but one get 409 from Keycloak)."""
        with self._lock:
            cached = self._cache.get(user)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            if user == TESTER and not self._tester_ready:
                self._ensure_tester()
            if user == TESTER:
                token = self._password_token(TESTER, self._tester_password)
            else:
                token = self.keycloak.token(user)
            self._cache[user] = (token, time.monotonic() + 600)
            return token

    async def headers(self, user: str = TESTER) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.get(user)}"}

    def _password_token(self, user: str, password: str, client: str = "complaints-cli") -> str:
        form = {"grant_type": "password", "client_id": client, "username": user}
        form["password"] = password
        return str(
            _post_form(f"{self.keycloak.issuer}/protocol/openid-connect/token", form)[
                "access_token"
            ]
        )

    def token_of_client(self, client: str, user: str = "agent") -> str:
        """A user's token issued to another client (another audience, or a short life)."""
        return self._password_token(user, f"{user.rstrip('0123456789')}-local-only", client)

    def _ensure_tester(self) -> None:
        """Create (or reset) the tester through the admin API of the local Keycloak."""
        base = self.keycloak.issuer.rsplit("/realms/", 1)[0]
        admin = _post_form(
            f"{base}/realms/master/protocol/openid-connect/token",
            {
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": "admin",
                "password": self.keycloak.secrets()["ADMIN_PASSWORD"],
            },
        )["access_token"]
        api = f"{base}/admin/realms/complaints"
        found = _request("GET", f"{api}/users?exact=true&username={TESTER}", admin)
        if found:
            user_id = found[0]["id"]
        else:
            _request(
                "POST",
                f"{api}/users",
                admin,
                {
                    "username": TESTER,
                    "enabled": True,
                    "email": "tester@complaints.local",
                    "emailVerified": True,
                    "firstName": "Test",
                    "lastName": "Runner",
                },
            )
            user_id = _request("GET", f"{api}/users?exact=true&username={TESTER}", admin)[0]["id"]
        _request(
            "PUT",
            f"{api}/users/{user_id}/reset-password",
            admin,
            {"type": "password", "value": self._tester_password, "temporary": False},
        )
        roles = [_request("GET", f"{api}/roles/{r}", admin) for r in TESTER_ROLES]
        _request("POST", f"{api}/users/{user_id}/role-mappings/realm", admin, roles)
        self._tester_ready = True


def _post_form(url: str, form: dict[str, str]) -> Any:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def _request(method: str, url: str, token: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


class Inbox:
    """An SMTP handler that keeps what it accepts (also in a Maildir spool, when given, as the
    local mail catcher does), and refuses the next ``fail`` messages."""

    def __init__(self, spool: Path | None = None) -> None:
        self.messages: list[EmailMessage] = []
        self.sessions: list[int] = []  # the SMTP session each message came over (numbered)
        self.secured: list[bool] = []  # whether each message came over TLS (STARTTLS)
        self._session_numbers = itertools.count(1)
        self.fail = 0
        self.refused = 0
        self.spool = mailbox.Maildir(spool, create=True) if spool is not None else None
        self._gate = threading.Event()
        self._gate.set()
        self.holding = threading.Event()  # a message is being held at DATA

    def hold(self) -> None:
        """Keep the next messages waiting at DATA (a slow server) until ``release``."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self._gate.is_set():
            self.holding.set()
            await asyncio.to_thread(self._gate.wait, 60)
            self.holding.clear()
        if self.fail:
            self.fail -= 1
            self.refused += 1
            return "451 4.3.0 Try again later"
        self.messages.append(message_from_bytes(envelope.content, policy=default))  # type: ignore[arg-type]
        if not hasattr(session, "complaints_number"):
            session.complaints_number = next(self._session_numbers)
        self.sessions.append(session.complaints_number)
        self.secured.append(session.ssl is not None)
        if self.spool is not None:
            self.spool.add(envelope.content)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    def messages_to(self, prefix: str) -> list[EmailMessage]:
        """The messages to addresses that start with ``prefix``."""
        return [m for m in self.messages if str(m["To"]).startswith(prefix)]


@dataclass
class Posted:
    """A message a :class:`Gateway` was posted: its JSON, its headers, the client port of the
    connection it came over (one port, one connection), and the status answered."""

    json: dict[str, Any]
    headers: dict[str, str]
    connection: int
    status: int


class Gateway:
    """A real HTTP message gateway (the webhook followup hands other channels' messages to):
    serve ``app``, post to ``/messages``.  It keeps what it is posted and answers each recipient
    (``to``) the statuses listed for them in ``answers`` in turn, then 200."""

    def __init__(self) -> None:
        self.posted: list[Posted] = []
        self.answers: dict[str, list[int]] = {}
        self.app = FastAPI()

        @self.app.post("/messages")
        async def receive(request: Request) -> Response:
            body = await request.json()
            waiting = self.answers.get(body.get("to"), [])
            status = waiting.pop(0) if waiting else 200
            assert request.client is not None
            self.posted.append(Posted(body, dict(request.headers), request.client.port, status))
            return Response(status_code=status)

    def to(self, recipient: str) -> list[Posted]:
        return [p for p in self.posted if p.json.get("to") == recipient]


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``host`` (an IP address) signed by its own key, and that key, as PEM
    files in ``directory``: what a server with a private authority presents."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address(host))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_password() -> str | None:
    """The local server's password, from ``PGPASSFILE`` (whose entry names the server's real
    port, so that a connection through a proxy does not find it there)."""
    pgpass = os.environ.get("PGPASSFILE")
    if not pgpass:
        return None
    return Path(pgpass).read_text().splitlines()[0].rsplit(":", 1)[1]


def behind(proxy: TcpProxy, dsn: str) -> str:
    """``dsn`` with the proxy's address in place of the server's."""
    u = urllib.parse.urlsplit(dsn)
    netloc = u.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urllib.parse.urlunsplit(
        u._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
    )


class TcpProxy:
    """A TCP forwarder in front of a real server, to cut the network to it and restore it:
    ``cut()`` refuses new connections and drops the open ones (what a client sees when the
    server stops); ``restore()`` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def restore(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._open):
            w.transport.abort()
        self._open.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open -= {writer, up_writer}


class CountingPool:
    """A pool whose reads (``fetch``, ``fetchrow``) are counted into ``seen``, by name: what a
    keyring asks its database."""

    def __init__(self, pool: asyncpg.Pool, seen: list[str]) -> None:
        self._pool, self._seen = pool, seen

    async def fetch(self, *args: Any) -> Any:
        self._seen.append("fetch")
        return await self._pool.fetch(*args)

    async def fetchrow(self, *args: Any) -> Any:
        self._seen.append("fetchrow")
        return await self._pool.fetchrow(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)
