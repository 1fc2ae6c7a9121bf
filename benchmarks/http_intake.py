"""Intake's ``POST /complaints`` under load, against the minimal FastAPI + one-INSERT baseline.

Both servers run as their own processes on the same machine, in the same run, each with a
fresh database on the same PostgreSQL server; wrk drives each with the same number of
connections, every request from a distinct customer.  Intake runs alone (its own database,
topics under a throw-away prefix, the real identity provider's token): what is measured is
the service's own cost per submission, not the other services' work on the same cores.

1. Saturation: 32 connections for ``seconds``, in three windows each, the two servers in
   turn (:func:`bench`): requests/s and latency percentiles of each; the ratio is intake's
   rate over the baseline's.  Also the CPU each server's processes and PostgreSQL's spent
   per answered request meanwhile: where a rate moves with what else the machine does, this
   moves less, so it is the figure to compare a change by.
2. Half load: intake at half of its own saturated rate, to read the latency a service at a
   comfortable load gives.  The requests are offered at that rate evenly spaced, whatever the
   answers' pace (:mod:`openloop`; latency counts from when each was due).  wrk's
   per-connection delay would send its 32 connections' requests in waves (they all start at
   once and wait the same time after each answer), so every wave queued behind itself: at the
   same rate it read p50 35-43 ms where the evenly spaced load reads 8-9 ms.

Every complaint tells the same short story (88 characters), or with ``description_chars`` the
same story told at that length (accents and all): what a long complaint costs, whose rules,
language and duplicate check read every character.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import openloop
from machine import IoStalls, in_turn

from complaints_intake.submissions import _HISTORIES
from complaints_shared.topics import delete_topics

ROOT = Path(__file__).resolve().parent.parent

SHORT_DESCRIPTION = (
    "A minha encomenda chegou com duas semanas de atraso e ninguem respondeu aos meus emails."
)
_SENTENCES = (
    "A minha encomenda chegou com duas semanas de atraso e ninguém respondeu aos meus e-mails. ",
    "Liguei três vezes para a linha de apoio e disseram-me sempre que o caso estava a ser visto. ",
    "Quando finalmente chegou, a caixa vinha amolgada e faltava o carregador do aparelho. ",
)


def description(chars: int | None = None) -> str:
    """The complaints' description: the short story, or the longer one cut at ``chars``."""
    if chars is None:
        return SHORT_DESCRIPTION
    story = "".join(_SENTENCES)
    return (story * (chars // len(story) + 1))[:chars].rstrip()


_SCRIPT = """
token = %(token)s
description = [==[%(description)s]==]
run = "%(run)s"
local counter = 0
tid = 0  -- a global: what setup sets in each thread's own state (a local would hide it)
function setup(thread) tid = tid + 1; thread:set("tid", tid) end
function init(args) prefix = run .. "-" .. tostring(tid) end
request = function()
  counter = counter + 1
  local who = prefix .. "-" .. counter
  local body = '{"channel":"email","customer":{"name":"Cliente ' .. who .. '","email":"c' ..
    who .. '@example.pt"},"subject":"Encomenda atrasada","description":' .. description .. '}'
  local headers = {["content-type"] = "application/json"}
  if token ~= "" then headers["authorization"] = "Bearer " .. token end
  return wrk.format("POST", "/complaints", headers, body)
end
%(delay)s
function done(summary, latency, requests)
  local ok = summary.requests - summary.errors.status - summary.errors.connect
    - summary.errors.read - summary.errors.write - summary.errors.timeout
  io.write(string.format("RESULT %%d %%d %%f %%f %%f %%f\\n", summary.requests, ok,
    summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3))
  local q = {}
  for i = 1, 199 do q[i] = string.format("%%.3f", latency:percentile(i / 2) / 1e3) end
  io.write("QUANTILES " .. table.concat(q, " ") .. "\\n")
end
"""


@dataclass(frozen=True)
class Load:
    requests: int
    ok: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    # the latency at every half percent, 0.5 to 99.5 (ms): what windows merge by
    quantiles: tuple[float, ...] = field(default=(), repr=False)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        figures = {k: v for k, v in asdict(self).items() if k != "quantiles"}
        return {**figures, "rate": round(self.rate, 1)}

    @staticmethod
    def merged(loads: list[Load]) -> Load:
        """Several windows' loads as one: their requests over their time together, and the
        latency percentiles of their distributions mixed (each window weighing by its answered
        requests; from each window's percentiles at every half percent).  Where no window
        has those (a wrk whose script printed none), the highest of the windows' own."""
        points = sorted(
            (q, load.ok / len(load.quantiles))
            for load in loads
            if load.quantiles
            for q in load.quantiles
        )
        total = sum(w for _, w in points)

        def percentile(p: float, own: list[float]) -> float:
            seen = 0.0
            for value, weight in points:
                seen += weight
                if seen >= p * total:
                    return value
            return points[-1][0] if points else max(own)

        return Load(
            requests=sum(load.requests for load in loads),
            ok=sum(load.ok for load in loads),
            seconds=sum(load.seconds for load in loads),
            p50_ms=percentile(0.50, [load.p50_ms for load in loads]),
            p99_ms=percentile(0.99, [load.p99_ms for load in loads]),
            max_ms=max(load.max_ms for load in loads),
            quantiles=(),
        )


def service_env(services_from: Path | None) -> dict[str, str]:
    """The environment of service processes; with ``services_from`` (another checkout of the
    project) they run that checkout's code, to compare two versions in one run.

    Without the shell's ``COMPLAINTS_*`` settings: the harness alone configures the services.
    A shell with the local infrastructure's (``./dev infra env``) passed on its master key
    file, which the services read before the harness's key: they could not open what the bench
    sealed (the rebuild stage's histories were dead-lettered, and the stage waited in vain)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPLAINTS_")}
    if services_from is not None:
        paths = [
            services_from / "shared" / "src",
            *sorted((services_from / "services").glob("*/src")),
        ]
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(
    url: str,
    token: str,
    seconds: float,
    connections: int = 32,
    rate: float | None = None,
    text: str = SHORT_DESCRIPTION,
) -> Load:
    """One wrk run, each complaint's description ``text``; with ``rate``, each connection waits
    so that all of them together offer about that many requests per second."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: install the Debian package wrk (./dev bench does)")
    delay = f"function delay() return {1000.0 * connections / rate:.1f} end" if rate else ""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            _SCRIPT
            % {
                "token": json.dumps(token),
                "delay": delay,
                "description": json.dumps(text),
                # its own customers: wrk's random numbers are the same in every run and
                # thread, so a run named by them sent the customers of the run before (its
                # warm-up's) again
                "run": os.urandom(4).hex(),
            }
        )
        script = f.name
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{int(seconds)}s",
                "--timeout",
                "10s",
                "-s",
                script,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script)
    m = re.search(r"^RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)$", out, re.M)
    if m is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    n, ok, secs, p50, p99, mx = m.groups()
    q = re.search(r"^QUANTILES (.+)$", out, re.M)
    quantiles = tuple(float(v) for v in q.group(1).split()) if q else ()
    return Load(int(n), int(ok), float(secs), float(p50), float(p99), float(mx), quantiles)


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU seconds of each group of processes so far (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        out[name] = total
    return out


def run_queue_seconds(pids: dict[str, list[int]]) -> dict[str, float] | None:
    """Seconds each group of processes has waited so far to run on a CPU when it could run
    (its threads' ``run_delay`` in ``/proc/<pid>/task/<tid>/schedstat``); ``None`` where the
    kernel does not keep it.  Two readings around a window give how long a process queued for
    the cores: at a full machine, what makes its latency, as none of it shows as its CPU."""
    if not Path("/proc/self/schedstat").exists():
        return None
    out: dict[str, float] = {}
    for name, group in pids.items():
        total = 0
        for pid in group:
            for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
                try:
                    total += int(stat.read_text().split()[1])
                except OSError:
                    continue  # the thread ended meanwhile
        out[name] = total / 1e9
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], ()))
    return tree


def postgres_pids() -> list[int]:
    """The PostgreSQL server's processes (each session is one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def saturate(
    url: str,
    token: str,
    seconds: float,
    server: subprocess.Popen[bytes],
    text: str = SHORT_DESCRIPTION,
) -> dict[str, Any]:
    """:func:`wrk` at 32 connections for ``seconds``, in a window of its own (:class:`IoStalls`):
    its figures, how long every task waited on I/O meanwhile (``io_stalls_ms``), and the CPU
    milliseconds per answered request that the server's processes and PostgreSQL's spent
    meanwhile (``cpu_ms``: less sensitive than a rate to what else the machine's cores are
    doing)."""
    saturation = Saturation(url, token, server, text)
    saturation.window(seconds)
    return saturation.figures()


@dataclass
class Saturation:
    """One server under :func:`wrk` at 32 connections, in windows of its own (see
    :func:`saturate`), and its figures over all of them (:meth:`figures`)."""

    url: str
    token: str
    server: subprocess.Popen[bytes]
    text: str = SHORT_DESCRIPTION
    loads: list[Load] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=lambda: {"server": 0.0, "postgres": 0.0})
    stalls: list[dict[str, float | None]] = field(default_factory=list)

    def window(self, seconds: float) -> None:
        with IoStalls() as stalls:
            pids = {"server": process_tree(self.server.pid), "postgres": postgres_pids()}
            before = cpu_seconds(pids)
            self.loads.append(wrk(self.url, self.token, seconds, text=self.text))
        pids["postgres"] = sorted(set(pids["postgres"]) | set(postgres_pids()))
        after = cpu_seconds(pids)
        for name in after:
            self.cpu[name] += after[name] - before[name]
        self.stalls.append(stalls.figures)

    def figures(self) -> dict[str, Any]:
        load = self.loads[0] if len(self.loads) == 1 else Load.merged(self.loads)
        per = max(load.ok, 1)
        totals = [t for f in self.stalls if (t := f["total"]) is not None]
        longest = [t for f in self.stalls if (t := f["longest"]) is not None]
        figures = {
            **load.as_dict(),
            "io_stalls_ms": {
                "total": sum(totals) if totals else None,
                "longest": max(longest) if longest else None,
            },
            "cpu_ms": {n: round(c * 1000 / per, 3) for n, c in self.cpu.items()},
        }
        if len(self.loads) > 1:
            figures["windows"] = [w.as_dict() for w in self.loads]
        return figures


def _wait_ready(
    url: str, proc: subprocess.Popen[bytes], within: float = 120, *, all_ok: bool = False
) -> None:
    """Until ``url`` answers its readiness with 200; with ``all_ok``, until that answer says
    ``ok`` on every check (consumers joined, Kafka connected), not ``degraded``."""
    deadline = time.monotonic() + within
    answer: Any = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{url}: the server exited with {proc.returncode} during start{_output(proc)}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as r:
                answer = json.loads(r.read()) if all_ok else None
                if r.status == 200 and (not all_ok or answer.get("status") == "ok"):
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.2)
    checks = f" ({answer.get('checks')})" if isinstance(answer, dict) else ""
    raise RuntimeError(f"{url}: not ready after {within:.0f}s{checks}{_output(proc)}")


class LoggedProcess(subprocess.Popen[bytes]):
    """A process of the platform whose output (stdout and stderr) goes to the file ``log``,
    appended to.  The services run at ``COMPLAINTS_LOG_LEVEL=WARNING``: every line there is a
    warning, an error or a crash, and a figure measured beside one is suspect."""

    def __init__(self, args: list[str], *, log: Path, env: dict[str, str] | None = None) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with log.open("ab") as out:
            super().__init__(
                args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )


def _output(proc: subprocess.Popen[bytes]) -> str:
    return f"; its output: {proc.log}" if isinstance(proc, LoggedProcess) else ""


def logged_lines(logs: Path) -> dict[str, int]:
    """Lines in each process's output under ``logs`` (:class:`LoggedProcess`), by file name;
    the files without any are removed, and ``logs`` too when none is left."""
    lines: dict[str, int] = {}
    for log in sorted(logs.glob("*.log")) if logs.is_dir() else ():
        with log.open("rb") as f:
            count = sum(1 for line in f if line.strip())
        if count:
            lines[log.name] = count
        else:
            log.unlink()
    if logs.is_dir() and not any(logs.iterdir()):
        logs.rmdir()
    return lines


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def complaint_posts(token: str, body: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """The i-th ``POST /complaints`` request with ``body(i)``, as :mod:`openloop` sends it."""
    head = (
        "POST /complaints HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\n"
    ).encode()

    def request(i: int) -> bytes:
        payload = body(i)
        return head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload

    return request


def open_loop(
    url: str, token: str, seconds: float, rate: float, text: str = SHORT_DESCRIPTION
) -> Load:
    """``rate`` requests/s evenly spaced for ``seconds`` over 32 keep-alive connections, each
    from a distinct customer (the body wrk sends); latency from when each request was due."""
    host, _, port = url.removeprefix("http://").partition(":")
    run = os.urandom(3).hex()

    def body(i: int) -> bytes:
        who = f"{run}-{i}"
        return json.dumps(
            {
                "channel": "email",
                "customer": {"name": f"Cliente {who}", "email": f"c{who}@example.pt"},
                "subject": "Encomenda atrasada",
                "description": text,
            }
        ).encode()

    request = complaint_posts(token, body)
    out = asyncio.run(openloop.run(host, int(port), request, rate, seconds, connections=32))
    return Load(
        requests=out.offered,
        ok=out.ok,
        seconds=out.seconds,
        p50_ms=out.percentile(50) * 1000,
        p99_ms=out.percentile(99) * 1000,
        max_ms=max(out.latencies, default=float("nan")) * 1000,
    )


# A stored complaint as intake keeps it: the read model row, its first event, and that event
# published.  Customers are distinct; receipt times spread over the last 90 days.
_PRELOAD = """
WITH made AS (
    INSERT INTO complaints (id, reference, status, channel, category, severity, language,
                            customer_key, subject, description, received, received_at,
                            updated_at, version)
    SELECT gen_random_uuid(), 'PRE-' || g, 'open', 'email', 'delivery', 'medium', 'pt',
           md5('customer ' || g), 'Encomenda atrasada ' || g,
           'A encomenda ' || g || ' chegou com atraso', '{}'::jsonb,
           now() - (g % 90) * interval '1 day' - (g % 86400) * interval '1 second', now(), 1
      FROM generate_series($1::bigint, $2::bigint) g
    RETURNING id, received_at
), stored AS (
    INSERT INTO events (stream_id, version, event_id, type, occurred_at, data)
    SELECT id, 1, gen_random_uuid(), 'ComplaintReceived', received_at, '{}'::jsonb FROM made
    RETURNING event_id
)
INSERT INTO outbox (event_id, topic, sent_at) SELECT event_id, 'preloaded', now() FROM stored
"""


async def _preload(dsn: str, count: int) -> str:
    """``count`` stored complaints in intake's database; the plan of the history query."""
    conn = await asyncpg.connect(dsn)
    try:
        for start in range(1, count + 1, 100_000):
            await conn.execute(_PRELOAD, start, min(count, start + 99_999))
        # vacuumed, analysed and written out now: autovacuum and the checkpointer would
        # otherwise work through the new rows during the measurement
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
        plan = json.loads(  # intake's own history query, for a customer with a complaint
            await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) {_HISTORIES}",
                [hashlib.md5(b"customer 42").hexdigest()],
                datetime.now(UTC) - timedelta(days=30),
                datetime.now(UTC) - timedelta(days=30),
            )
        )
    finally:
        await conn.close()

    def nodes(node: dict[str, Any]) -> list[str]:
        here = f"{node['Node Type']}" + (
            f" using {node['Index Name']}" if "Index Name" in node else ""
        )
        return [here] + [n for child in node.get("Plans", ()) for n in nodes(child)]

    return ", ".join(nodes(plan[0]["Plan"]))


@dataclass(frozen=True)
class Harness:
    """What every stage that runs services needs: the servers, a token, a master key, and a
    way to make a fresh database (dropped after the run)."""

    server: str
    bootstrap: str
    issuer: str
    token: str
    master_key: str
    create_database: Callable[[str], str]
    logs: Path  # where each process of the platform writes its output (:class:`LoggedProcess`)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def service_env(self, database: str, keyring: str, prefix: str, port: int) -> dict[str, str]:
        return {
            "COMPLAINTS_KAFKA_BOOTSTRAP": self.bootstrap,
            "COMPLAINTS_OIDC_ISSUER": self.issuer,
            "COMPLAINTS_DATABASE_URL": f"{self.server}/{database}",
            "COMPLAINTS_KEYRING_URL": f"{self.server}/{keyring}",
            "COMPLAINTS_KEYRING_MASTER_KEY": self.master_key,
            "COMPLAINTS_TOPIC_PREFIX": prefix,
            "COMPLAINTS_LOG_LEVEL": "WARNING",
            "COMPLAINTS_PORT": str(port),
        }


def bench_stored(h: Harness, *, seconds: float, counts: list[int]) -> dict[str, Any]:
    """Intake at saturation with ``counts`` complaints already stored (each in a fresh
    database): requests/s, latency, the CPU per answered request of intake and of PostgreSQL
    (:func:`saturate`: a query that reads more rows as the table grows shows there first, and
    it moves less than a rate with what else the machine does), and the plan of the
    customer-history query."""
    results: dict[str, Any] = {}
    for count in counts:
        suffix = os.urandom(3).hex()
        intake, url, intake_db = _start_intake(h, f"bench_stored_{suffix}", None)
        try:
            _wait_ready(url, intake)  # migrated: the tables exist
            t0 = time.monotonic()
            plan = asyncio.run(_preload(f"{h.server}/{intake_db}", count)) if count else ""
            loaded = time.monotonic() - t0
            wrk(url, h.token, 3)
            # saturate's window writes the page cache out first: the preload's pages are not
            # written back during the load
            results[str(count)] = {
                **saturate(url, h.token, seconds, intake),
                "history_plan": plan,
                "preload_seconds": round(loaded, 1),
            }
        finally:
            _stop(intake)
            asyncio.run(delete_topics(h.bootstrap, f"bench_stored_{suffix}."))
    return results


def _start_intake(
    h: Harness, name: str, services_from: Path | None, workers: int = 1
) -> tuple[subprocess.Popen[bytes], str, str]:
    """An intake process (``workers`` processes sharing its port) on fresh databases and topics
    named ``name``; its URL and database."""
    intake_db = h.create_database(name)
    keyring_db = h.create_database(f"{name}_keyring")
    port = free_port()
    proc = LoggedProcess(
        [sys.executable, "-m", "complaints_intake"],
        env={
            **service_env(services_from),
            **h.service_env(intake_db, keyring_db, f"{name}.", port),
            "COMPLAINTS_WORKERS": str(workers),
        },
        log=h.log(f"{name}.intake"),
    )
    return proc, f"http://127.0.0.1:{port}", intake_db


ROUNDS = 3  # saturation windows of each server, taken in turn


def bench(
    h: Harness,
    *,
    seconds: float,
    services_from: Path | None = None,
    workers: int = 1,
    description_chars: int | None = None,
) -> dict[str, Any]:
    """Both servers at once on the same machine, each as ``workers`` processes, each
    complaint's description ``description_chars`` long (else the short one); returns the
    figures.

    At saturation each server takes ``seconds`` in :data:`ROUNDS` windows, the two in turn
    (each first in every other round), so that a slow moment of the machine weighs on both
    sides of the ratio: run one after the other, a shared machine's drift between the two
    halves moved the ratio by a third (0.25x-0.38x in one afternoon's runs of the same code).
    Each rate is its windows' answered requests over their time together; the percentiles
    are of their latencies mixed.  The server not under load meanwhile idles (intake's relay
    and consumers wait on their connections)."""
    suffix = os.urandom(3).hex()
    base_db = h.create_database(f"bench_base_{suffix}")
    text = description(description_chars)
    results: dict[str, Any] = {"workers": workers, "description_chars": len(text)}
    intake, intake_url, _ = _start_intake(h, f"bench_intake_{suffix}", services_from, workers)
    port = free_port()
    baseline = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "baseline_app.py"),
            "--port",
            str(port),
            "--dsn",
            f"{h.server}/{base_db}",
            "--workers",
            str(workers),
        ],
        stdin=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(intake_url, intake)
        _wait_ready(base_url, baseline)
        # warm-up: connections, prepared statements, the JWKS
        wrk(intake_url, h.token, 3, text=text)
        wrk(base_url, "", 3, text=text)
        servers = [
            ("intake", Saturation(intake_url, h.token, intake, text)),
            ("baseline", Saturation(base_url, "", baseline, text)),
        ]
        window = max(seconds / ROUNDS, 3.0)
        for r in range(ROUNDS):
            for _, saturation in in_turn(servers, r):
                saturation.window(window)
        for name, saturation in servers:
            results[name] = saturation.figures()
        saturated = results["intake"]
        # what the saturation wrote is written out now, not in the middle of the half load
        with IoStalls() as stalls:
            half = open_loop(intake_url, h.token, seconds, rate=saturated["rate"] / 2, text=text)
        results["intake_half_load"] = {
            **half.as_dict(),
            "offered": round(saturated["rate"] / 2, 1),
            "io_stalls_ms": stalls.figures,
        }
    finally:
        _stop(baseline)
        _stop(intake)
        asyncio.run(delete_topics(h.bootstrap, f"bench_intake_{suffix}."))
    return results
