"""The fault suite: the whole platform as separate processes, driven from outside under faults.

Starts the local Kafka, PostgreSQL and Keycloak (``deploy/local/infra.py``; they must be the
project's own, since the suite kills and restarts them), a mail catcher, and the four services
as processes of their own on fresh databases and topics: two intake instances sharing one
database, one instance of each other service.  Complaints are submitted in waves by clients
that retry with the same ``Idempotency-Key`` until they are acknowledged, and every
acknowledged complaint is driven through resolution (assign, cause, proposal, agreement,
resolve) by agents that re-read the case after any failure.  Each wave runs while one fault
hits:

- each service is kill -9'd and started again (one intake instance, resolution, followup,
  learning);
- the outbox relay leader (an intake instance) is paused with SIGSTOP until the other instance
  has reported the stall in its metrics and taken over, then resumed;
- the broker is kill -9'd and started again;
- PostgreSQL is stopped immediately (as a crash) and started again.

Then it waits for the pipeline to settle and prints what customers, agents and integrators
would count (and writes it as JSON next to the services' logs).  Exit status 1 unless nothing
acknowledged was lost anywhere, nothing was doubled, no record was dead-lettered, every outbox
drained, every stream's ``ce_sequence`` on its topic has no gap, no delivery went out in more
e-mail copies than the policy's bound, every fault was recovered from, and the relay stall was
visible in metrics before it was repaired.

    ./dev faults                   # 500 complaints (the bounded form CI runs)
    ./dev faults --complaints 2000 --keep
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mailbox
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy" / "local"))
sys.path.insert(0, str(ROOT))

from complaints_shared.envelope import cloudevent_headers  # noqa: E402
from complaints_shared.outbox import leader_session  # noqa: E402
from complaints_shared.privacy import new_master_key  # noqa: E402
from complaints_shared.topics import delete_topics  # noqa: E402
from infra import LocalInfra  # noqa: E402
from tests.support import AGENT, Tokens, free_port  # noqa: E402

SERVICES = ("intake", "resolution", "followup", "learning")
MAX_ATTEMPTS = 4  # the policy's delivery_max_attempts: the bound on e-mail copies per delivery
POLICY = f"""
[calendar]
always_open = true
[resolution]
timer_poll = "PT0.2S"
[followup]
satisfaction_check_delay = "PT2S"
delivery_retry = "PT1S"
delivery_retry_max = "PT5S"
delivery_max_attempts = {MAX_ATTEMPTS}
timer_poll = "PT0.2S"
"""
TOPICS = ("complaints.intake.v2", "complaints.resolution.v2", "complaints.followup.v2")
DLQ = "complaints.dlq.v1"

# A case's next step by its state, and the command's body.
CAUSE = {
    "what_happened": "The parcel was left outside in the rain",
    "what_should_have_happened": "Handed over or taken back to the depot",
    "what_went_wrong": "The driver skipped the signature step",
    "root_cause": "process",
    "responsible": "us",
}
STEPS: dict[str, tuple[str, dict[str, Any]]] = {
    "opened": ("assign", {"owner": AGENT}),
    "assigned": ("cause", CAUSE),
    "investigating": ("cause", CAUSE),
    "cause_identified": (
        "proposals",
        {"options": [{"remedy": "apology", "description": "A written apology"}]},
    ),
    "solution_proposed": (
        "agreement",
        {
            "option_id": 1,
            "agreed_outcome": "A written apology",
            "indicators": ["the customer confirms"],
            "deadline": "2099-01-01T12:00:00+00:00",
        },
    ),
    "solution_agreed": ("resolve", {"summary": "Apologised in writing"}),
}
DONE = {"resolved", "closed"}


def say(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


@dataclass
class Service:
    """One service instance as a process of its own (new session: its own process group)."""

    label: str
    name: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"complaints_{self.name}"],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    async def ready(self, http: httpx.AsyncClient) -> bool:
        """Ready with database, broker, outbox and consumers ok (a background task restarted
        in the last minute still shows in the answer, and is no reason to wait)."""
        try:
            r = await http.get(f"{self.url}/health/ready", timeout=3)
        except httpx.HTTPError:
            return False
        checks = r.json().get("checks", {}) if r.status_code == 200 else {}
        return all(checks.get(k) == "ok" for k in ("database", "kafka", "outbox", "consumers"))

    async def metric(self, http: httpx.AsyncClient, name: str) -> float | None:
        try:
            r = await http.get(f"{self.url}/metrics", timeout=3)
        except httpx.HTTPError:
            return None
        m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", r.text, re.M)
        return float(m.group(1)) if m else None


@dataclass
class Complaint:
    key: str
    body: dict[str, Any]
    ids: set[str] = field(default_factory=set)  # every id an acknowledgement carried
    resolved: bool = False
    error: str | None = None

    @property
    def id(self) -> str | None:
        return next(iter(self.ids)) if len(self.ids) == 1 else None


@dataclass
class Fault:
    name: str
    recovery_seconds: float | None = None
    detail: str = ""


class Suite:
    def __init__(self, complaints: int, concurrency: int, keep: bool) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.dir = ROOT / ".local" / "faults" / self.run_id
        self.dir.mkdir(parents=True)
        self.total = complaints
        self.concurrency = concurrency
        self.keep = keep
        self.infra = LocalInfra.from_env()
        self.prefix = f"faults{self.run_id}."
        self.databases = {s: f"faults_{self.run_id}_{s}" for s in (*SERVICES, "keyring")}
        self.complaints: list[Complaint] = []
        self.faults: list[Fault] = []
        self.services: dict[str, Service] = {}
        self.drivers: list[asyncio.Task[None]] = []
        self.gate = asyncio.Semaphore(concurrency)
        self.http = httpx.AsyncClient(timeout=10)
        self.tokens = Tokens(self.infra.keycloak)
        self.mail_proc: subprocess.Popen[bytes] | None = None
        self.maildir = self.dir / "mail"

    # --- the platform --------------------------------------------------------------------

    def start_platform(self) -> dict[str, bool]:
        started = self.infra.up(list(self.databases.values()))
        policy = self.dir / "policy.toml"
        policy.write_text(POLICY)
        mailbox.Maildir(self.maildir, create=True)
        smtp = free_port()
        self.mail_proc = subprocess.Popen(
            [
                *(sys.executable, str(ROOT / "deploy" / "local" / "mail_catcher.py")),
                *("--port", str(smtp), "--maildir", str(self.maildir)),
            ],
            stdout=(self.dir / "mail.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = self.infra.postgres.url
        common = {
            **os.environ,
            "PGPASSFILE": str(self.infra.postgres.passfile),
            "PYTHONUNBUFFERED": "1",
            "COMPLAINTS_KAFKA_BOOTSTRAP": self.infra.kafka.bootstrap,
            "COMPLAINTS_OIDC_ISSUER": self.infra.keycloak.issuer,
            "COMPLAINTS_KEYRING_URL": f"{server}/{self.databases['keyring']}",
            "COMPLAINTS_KEYRING_MASTER_KEY": new_master_key(),
            "COMPLAINTS_TOPIC_PREFIX": self.prefix,
            "COMPLAINTS_POLICY": str(policy),
            "COMPLAINTS_SMTP_HOST": "127.0.0.1",
            "COMPLAINTS_SMTP_PORT": str(smtp),
            "COMPLAINTS_OUTBOX_TAKEOVER_SECONDS": "5",
            "COMPLAINTS_LOG_FORMAT": "text",
        }
        for label, name in (
            ("intake-a", "intake"),
            ("intake-b", "intake"),
            ("resolution", "resolution"),
            ("followup", "followup"),
            ("learning", "learning"),
        ):
            port = free_port()
            env = {
                **common,
                "COMPLAINTS_DATABASE_URL": f"{server}/{self.databases[name]}",
                "COMPLAINTS_PORT": str(port),
                "OTEL_SERVICE_NAME": name,
            }
            self.services[label] = Service(label, name, port, env, self.dir / f"{label}.log")
        for s in self.services.values():
            s.start()
        return started

    async def wait_ready(self, *labels: str, within: float = 180) -> float:
        t0 = time.monotonic()
        waiting = set(labels or self.services)
        while waiting:
            for label in list(waiting):
                s = self.services[label]
                if s.proc is not None and s.proc.poll() is not None:
                    raise RuntimeError(f"{label} exited with {s.proc.returncode}; see {s.log}")
                if await s.ready(self.http):
                    waiting.discard(label)
            if time.monotonic() - t0 > within:
                raise RuntimeError(f"not ready after {within:.0f}s: {sorted(waiting)}")
            await asyncio.sleep(0.2)
        return time.monotonic() - t0

    def stop_platform(self, started: dict[str, bool]) -> None:
        for s in self.services.values():
            s.stop()
        if self.mail_proc is not None:
            self.mail_proc.terminate()
            self.mail_proc.wait()
        if not self.infra.postgres.running():
            self.infra.postgres.start()
        if not self.keep:
            with contextlib.suppress(Exception):
                asyncio.run(self._drop_databases())
        self.infra.down(started)

    async def _drop_databases(self) -> None:
        conn = await self.connect("postgres")
        try:
            for db in self.databases.values():
                await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            await conn.close()
        await delete_topics(self.infra.kafka.bootstrap, self.prefix)

    async def connect(self, database: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            f"{self.infra.postgres.url}/{database}", password=self.infra.postgres.password()
        )

    # --- the clients ---------------------------------------------------------------------

    async def call(self, method: str, url: str, **kw: Any) -> httpx.Response | None:
        """One request as the tester (every staff role); None when no answer came."""
        headers = {"Authorization": f"Bearer {await self.tokens.get()}", **kw.pop("headers", {})}
        try:
            return await self.http.request(method, url, headers=headers, **kw)
        except httpx.HTTPError:
            return None

    async def submit(self, c: Complaint, deadline: float = 300) -> None:
        """Submit until acknowledged, with the same key, on either intake instance."""
        intakes = [self.services["intake-a"], self.services["intake-b"]]
        turn = hash(c.key) % 2
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline:
            target = intakes[turn % 2]
            r = await self.call(
                "POST",
                f"{target.url}/complaints",
                json=c.body,
                headers={"Idempotency-Key": c.key},
            )
            if r is not None and r.status_code in (200, 201):
                c.ids.add(r.json()["complaint_id"])
                return
            if r is not None and r.status_code < 500 and r.status_code not in (408, 429):
                c.error = f"submission answered {r.status_code}: {r.text[:200]}"
                return
            turn += 1
            await asyncio.sleep(0.5)
        c.error = "never acknowledged"

    async def drive(self, c: Complaint, deadline: float = 600) -> None:
        """Drive an acknowledged complaint's case to resolved, re-reading it after failures."""
        base = f"{self.services['resolution'].url}/cases/{c.id}"
        t0 = time.monotonic()
        case: dict[str, Any] | None = None
        while time.monotonic() - t0 < deadline:
            if case is None:
                r = await self.call("GET", base)
                if r is None or r.status_code != 200:
                    await asyncio.sleep(0.5)  # not opened yet, or resolution is down
                    continue
                case = r.json()
            state = case["state"]
            if state in DONE:
                c.resolved = True
                return
            if state not in STEPS:
                c.error = f"case in unexpected state {state}"
                return
            path, body = STEPS[state]
            async with self.gate:
                r = await self.call("POST", f"{base}/{path}", json=body)
            if r is not None and r.status_code == 200:
                case = r.json()
                continue
            if r is not None and r.status_code not in (409, 429) and r.status_code < 500:
                c.error = f"{path} answered {r.status_code}: {r.text[:200]}"
                return
            case = None  # the outcome is unknown: read the case again
            await asyncio.sleep(0.3)
        c.error = "case not resolved in time"

    def complaint(self, key: str, subject: str, customer: str) -> Complaint:
        return Complaint(
            key=f"faults-{self.run_id}-{key}",
            body={
                "channel": "email",
                "subject": subject,
                "description": "The parcel was left outside the door and got soaked.",
                "customer": {
                    "name": customer.capitalize(),
                    "email": f"{customer}@example.com",
                    "language": "en",
                },
                "category": "delivery",
                "severity": "medium",
            },
        )

    async def client(self, c: Complaint, work: Awaitable[None]) -> None:
        """One client's work; a client that breaks down is reported, and the run goes on."""
        try:
            await work
        except Exception as exc:
            c.error = f"client failed: {type(exc).__name__}: {exc}"

    async def wave(self, n: int, seconds: float) -> None:
        """Submit ``n`` new complaints spread over ``seconds``; drive each once acknowledged."""

        async def one(c: Complaint) -> None:
            async with self.gate:
                await self.submit(c)
            if c.id is not None:
                await self.drive(c)

        start = len(self.complaints)
        for i in range(start, start + n):
            c = self.complaint(str(i), f"Parcel {i} left in the rain", f"customer{i}")
            self.complaints.append(c)
            self.drivers.append(asyncio.create_task(self.client(c, one(c))))
            await asyncio.sleep(seconds / n)

    # --- the faults ----------------------------------------------------------------------

    async def timed(self, probe: Callable[[], Awaitable[bool]], within: float = 180) -> float:
        """Seconds until ``probe`` holds; TimeoutError after ``within``."""
        t0 = time.monotonic()
        while not await probe():
            if time.monotonic() - t0 > within:
                raise TimeoutError
            await asyncio.sleep(0.2)
        return time.monotonic() - t0

    async def kill_service(self, label: str) -> Fault:
        fault = Fault(f"kill -9 {label}")
        await asyncio.sleep(2)
        self.services[label].kill()
        t0 = time.monotonic()
        await asyncio.sleep(1)
        self.services[label].start()
        await self.wait_ready(label)
        fault.recovery_seconds = time.monotonic() - t0
        return fault

    async def current_leader(self) -> Service | None:
        """The intake instance whose relay holds the outbox leader lock (its session names
        the process), if any."""
        conn = await self.connect(self.databases["intake"])
        try:
            session = await leader_session(conn)
        finally:
            await conn.close()
        m = re.search(r" pid (\d+) relay$", session["application_name"] if session else "")
        for s in self.services.values():
            if m and s.proc is not None and s.proc.pid == int(m.group(1)):
                return s
        return None

    async def relay_leader(self) -> Service:
        leader: Service | None = None

        async def found() -> bool:
            nonlocal leader
            leader = await self.current_leader()
            return leader is not None

        await self.timed(found, 60)
        assert leader is not None
        return leader

    async def pause_relay_leader(self) -> Fault:
        leader = await self.relay_leader()
        other = self.services["intake-b" if leader.label == "intake-a" else "intake-a"]
        fault = Fault(f"SIGSTOP relay leader {leader.label}")
        await asyncio.sleep(1)
        leader.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        seen = 0.0
        try:

            async def visible() -> bool:
                nonlocal seen
                age = await other.metric(self.http, "complaints_outbox_oldest_unsent_seconds")
                seen = max(seen, age or 0.0)
                return seen >= 1.0

            await self.timed(visible, 60)
            stalled_for = time.monotonic() - t0

            async def taken_over() -> bool:
                return (await self.current_leader()) is other and await self.drained("intake")

            await self.timed(taken_over, 120)
            fault.recovery_seconds = time.monotonic() - t0
            fault.detail = (
                f"stall visible on {other.label} after {stalled_for:.1f}s"
                f" (oldest unsent {seen:.1f}s); {other.label} took over"
            )
        finally:
            leader.signal(signal.SIGCONT)
        await self.wait_ready(leader.label)
        return fault

    async def crash_server(
        self, name: str, crash: Callable[[], object], start: Callable[[], object]
    ) -> Fault:
        """Crash a server under the platform, start it again after 3 s; recovered when every
        service is ready and a new complaint opens its case."""
        fault = Fault(name)
        await asyncio.sleep(2)
        await asyncio.to_thread(crash)
        t0 = time.monotonic()
        await asyncio.sleep(3)
        await asyncio.to_thread(start)
        await self.wait_ready()
        await self.probe_complaint()
        fault.recovery_seconds = time.monotonic() - t0
        return fault

    async def probe_complaint(self) -> None:
        """A complaint submitted now opens its case: the whole write path works again."""
        c = self.complaint(f"probe-{len(self.faults)}", "Probe after a fault", "probe")
        await self.submit(c)
        assert c.id is not None, c.error

        async def opened() -> bool:
            r = await self.call("GET", f"{self.services['resolution'].url}/cases/{c.id}")
            return r is not None and r.status_code == 200

        await self.timed(opened)
        self.complaints.append(c)
        self.drivers.append(asyncio.create_task(self.client(c, self.drive(c))))

    async def drained(self, service: str) -> bool:
        try:
            conn = await self.connect(self.databases[service])
        except (OSError, asyncpg.PostgresError):
            return False
        try:
            return not await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        finally:
            await conn.close()

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        await self.wait_ready()
        say(f"platform ready ({self.dir}); {self.total} complaints in waves, one per fault")
        injections: list[tuple[str, Callable[[], Awaitable[Fault]]]] = [
            ("kill -9 intake-a", lambda: self.kill_service("intake-a")),
            ("kill -9 resolution", lambda: self.kill_service("resolution")),
            ("kill -9 followup", lambda: self.kill_service("followup")),
            ("kill -9 learning", lambda: self.kill_service("learning")),
            ("SIGSTOP relay leader", self.pause_relay_leader),
            (
                "kill -9 Kafka",
                lambda: self.crash_server(
                    "kill -9 Kafka", self.infra.kafka.kill, self.infra.kafka.start
                ),
            ),
            (
                "PostgreSQL stop -m immediate",
                lambda: self.crash_server(
                    "PostgreSQL stop -m immediate",
                    lambda: self.infra.postgres.stop("immediate"),
                    self.infra.postgres.start,
                ),
            ),
        ]
        per_wave = max(1, self.total // len(injections))
        for k, (name, inject) in enumerate(injections):
            n = per_wave if k < len(injections) - 1 else self.total - per_wave * k
            try:
                fault, _ = await asyncio.gather(inject(), self.wave(n, 8.0))
            except Exception as exc:  # not recovered from: reported, and the run goes on
                fault = Fault(name, None, f"not recovered: {type(exc).__name__} {exc}")
            self.faults.append(fault)
            rec = f"{fault.recovery_seconds:.1f}s" if fault.recovery_seconds else "NOT RECOVERED"
            say(f"{fault.name}: recovered in {rec}. {fault.detail}")
        say("faults done; waiting for every case to be resolved")
        await asyncio.gather(*self.drivers)
        say("driven; waiting for the pipeline to settle")
        settled = await self.settle()
        await self.http.aclose()
        return await self.verdict(settled)

    async def settle(self, within: float = 300) -> float | None:
        acked = {c.id for c in self.complaints if c.id}

        async def quiet() -> bool:
            for s in SERVICES:
                if not await self.drained(s):
                    return False
            followup = await self.connect(self.databases["followup"])
            learning = await self.connect(self.databases["learning"])
            try:
                checks = await followup.fetchval(
                    "SELECT count(DISTINCT complaint_id) FROM satisfaction_checks"
                    " WHERE sent_at IS NOT NULL"
                )
                pending = await followup.fetchval(
                    "SELECT count(*) FROM deliveries WHERE status = 'pending'"
                )
                counted = await learning.fetchval("SELECT count(*) FROM complaint_facts")
                # every driven case has a cause: settled once learning counted each one, as
                # the verdict checks (facts alone are written at receipt, long before)
                causes = await learning.fetchval(
                    "SELECT count(DISTINCT complaint_id) FROM occurrences"
                )
            finally:
                await followup.close()
                await learning.close()
            return bool(
                checks >= len(acked)
                and not pending
                and counted >= len(acked)
                and causes >= len(acked)
            )

        try:
            return await self.timed(quiet, within)
        except TimeoutError:
            return None

    async def verdict(self, settled: float | None) -> dict[str, Any]:
        acked = {c.id for c in self.complaints if c.id}
        db = {s: await self.connect(self.databases[s]) for s in SERVICES}
        try:
            received = {
                str(r[0])
                for r in await db["intake"].fetch(
                    "SELECT stream_id FROM events WHERE type = 'ComplaintReceived'"
                )
            }
            opened = Counter(
                str(r[0])
                for r in await db["resolution"].fetch(
                    "SELECT stream_id FROM events WHERE type = 'CaseOpened'"
                )
            )
            contacts = {
                str(r[0])
                for r in await db["followup"].fetch("SELECT complaint_id FROM contact_preferences")
            }
            checks = Counter(
                str(r[0])
                for r in await db["followup"].fetch("SELECT complaint_id FROM satisfaction_checks")
            )
            counted = Counter(
                str(r[0])
                for r in await db["learning"].fetch("SELECT complaint_id FROM occurrences")
            )
            facts = {
                str(r[0])
                for r in await db["learning"].fetch("SELECT complaint_id FROM complaint_facts")
            }
            unsent = {
                s: await db[s].fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                for s in SERVICES
            }
        finally:
            for conn in db.values():
                await conn.close()
        gaps, published_twice, dlq = await self.read_topics()
        copies = self.mail_copies()
        lost = {
            "intake": len(acked - received),
            "resolution (case opened)": len(acked - set(opened)),
            "followup (contact recorded)": len(acked - contacts),
            "followup (check scheduled)": len(acked - set(checks)),
            "learning (counted)": len(acked - facts),
            "learning (cause counted)": len(acked - set(counted)),
        }
        doubled = {
            "acknowledgements with another id": sum(len(c.ids) > 1 for c in self.complaints),
            "cases opened twice": sum(n > 1 for n in opened.values()),
            "checks scheduled twice": sum(n > 1 for n in checks.values()),
            "causes counted twice": sum(n > 1 for n in counted.values()),
        }
        report: dict[str, Any] = {
            "submitted": len(self.complaints),
            "acknowledged": len(acked),
            "not acknowledged": sum(c.id is None for c in self.complaints),
            "resolved": sum(c.resolved for c in self.complaints),
            "errors": sorted({c.error for c in self.complaints if c.error})[:10],
            "lost": lost,
            "doubled": doubled,
            "recorded without acknowledgement": len(received - acked),
            "dlq records": dlq,
            "outbox unsent": unsent,
            "ce_sequence gaps": gaps,
            "records published more than once": published_twice,
            "deliveries": len(copies),
            "duplicate deliveries": sum(n > 1 for n in copies.values()),
            "e-mail copies per delivery (max)": max(copies.values(), default=0),
            "e-mail copy bound": MAX_ATTEMPTS,
            "faults": [
                {"fault": f.name, "recovery_seconds": f.recovery_seconds, "detail": f.detail}
                for f in self.faults
            ],
            "settled_after_seconds": settled,
        }
        failures = []
        if sum(lost.values()):
            failures.append("lost")
        if sum(doubled.values()):
            failures.append("doubled")
        if report["not acknowledged"] or report["errors"]:
            failures.append("clients gave up")
        if report["resolved"] < len(acked):
            failures.append("cases not resolved")
        if dlq:
            failures.append("dead-lettered records")
        if sum(unsent.values()):
            failures.append("outbox not drained")
        if gaps:
            failures.append("ce_sequence gaps")
        if report["e-mail copies per delivery (max)"] > MAX_ATTEMPTS:
            failures.append("e-mail copies over the bound")
        if any(f.recovery_seconds is None for f in self.faults):
            failures.append("a fault not recovered from (or its stall not visible)")
        if settled is None:
            failures.append("did not settle")
        report["failures"] = failures
        return report

    async def read_topics(self) -> tuple[int, int, int]:
        """ce_sequence gaps per stream, records seen more than once, and DLQ records."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.infra.kafka.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()  # every topic's partitions
            parts = []
            for topic in (*TOPICS, DLQ):
                for p in consumer.partitions_for_topic(self.prefix + topic) or ():
                    parts.append(TopicPartition(self.prefix + topic, p))
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            sequences: dict[tuple[str, str], list[int]] = defaultdict(list)
            dlq = 0
            remaining = {tp for tp in parts if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, records in batch.items():
                    for r in records:
                        if tp.topic.endswith(DLQ):
                            dlq += 1
                        else:
                            h = cloudevent_headers(r.headers)
                            sequences[(tp.topic, h["ce_subject"])].append(int(h["ce_sequence"]))
                        if r.offset + 1 >= ends[tp]:
                            remaining.discard(tp)
        finally:
            await consumer.stop()
        gaps = twice = 0
        for seqs in sequences.values():
            if not seqs:
                continue
            distinct = sorted(set(seqs))
            twice += len(seqs) - len(distinct)
            gaps += distinct != list(range(1, distinct[-1] + 1))
        return gaps, twice, dlq

    def mail_copies(self) -> Counter[str]:
        copies: Counter[str] = Counter()
        for message in mailbox.Maildir(self.maildir, create=False):
            copies[(message["Message-ID"] or "").strip()] += 1
        return copies


def print_report(report: dict[str, Any]) -> None:
    print("\nFault suite")
    for key in (
        "submitted",
        "acknowledged",
        "not acknowledged",
        "resolved",
        "recorded without acknowledgement",
    ):
        print(f"  {key:<40} {report[key]}")
    for group in ("lost", "doubled", "outbox unsent"):
        for key, value in report[group].items():
            print(f"  {group + ': ' + key:<40} {value}")
    for key in (
        "dlq records",
        "ce_sequence gaps",
        "records published more than once",
        "deliveries",
        "duplicate deliveries",
        "e-mail copies per delivery (max)",
        "e-mail copy bound",
        "settled_after_seconds",
    ):
        print(f"  {key:<40} {report[key]}")
    print("  recovery per fault:")
    for f in report["faults"]:
        rec = f"{f['recovery_seconds']:.1f}s" if f["recovery_seconds"] else "NOT RECOVERED"
        print(f"    {f['fault']:<36} {rec:<14} {f['detail']}")
    if report["errors"]:
        print("  client errors:", *report["errors"], sep="\n    ")
    print("  verdict:", "FAILED: " + ", ".join(report["failures"]) if report["failures"] else "ok")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--complaints", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the databases and topics")
    args = parser.parse_args()
    for var in ("COMPLAINTS_KAFKA_BOOTSTRAP", "COMPLAINTS_DATABASE_URL"):
        if os.environ.get(var):
            print(f"error: the fault suite kills and restarts its own servers; unset {var}")
            return 2
    suite = Suite(args.complaints, args.concurrency, args.keep)
    started: dict[str, bool] = {}
    try:
        started = suite.start_platform()
        report = asyncio.run(suite.run())
    except Exception as exc:
        print(f"error: the fault suite could not run: {type(exc).__name__}: {exc}")
        print(f"logs: {suite.dir}")
        return 1
    finally:
        suite.stop_platform(started)
    (suite.dir / "report.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"  logs and report: {suite.dir}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
