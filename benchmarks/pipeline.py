"""The whole pipeline at a fixed offered rate: intake → case opened → followup contact → learning.

All four services run as their own processes (fresh databases, topics under a throw-away
prefix, a local SMTP catcher for the acknowledgements), as ``./dev run`` runs them.  An
open-loop client (:mod:`openloop`) offers ``rate`` complaints/s for ``seconds``, each from a
distinct customer, with a real access token.  Every few seconds the bench counts, in each
service's own database, how many complaints reached it (intake's complaints, resolution's
cases, followup's contact preferences and sent acknowledgement e-mails, learning's complaint
facts), so the backlog of each stage over time is known; after the load it waits for the
backlog to drain.  Those counts scan whole tables: the sessions that run them are left out of
PostgreSQL's CPU per complaint (a tenth of a millisecond of it at 300/s).

Figures: the POST latency, the rate each stage completed at during the load (from the first
count a filling time into it, ``FILLED_SECONDS``, to the last: counted from the load's start, a
stage that keeps up read short of the offered rate by its own latency, e.g. 299 of 300 a second
for a second's latency over 60 s), each stage's backlog growth over the second half of the load
(complaints/s; ≈0 when it keeps up), the drain time, and p50/p99 of three latencies: from the
POST (when the client's request was due) to the first resolution event on Kafka
(``CaseOpened``: the record's producer timestamp), what a client of the platform waits for; and
from receipt (intake's ``received_at``, taken in the transaction that writes the complaint,
after the request's queueing, its HTTP handling and its wait for a group) to ``CaseOpened`` and
to the acknowledgement e-mail handed to the SMTP server (followup's ``sent_at``).  Receipt →
``CaseOpened`` is also split into its two hops at ``ComplaintReceived`` on Kafka (its record's
producer timestamp): intake's relay, then resolution's fetch, batch and relay.  And how busy
all CPUs were during the load, and the share of it the load's own client took: a latency's tail
depends on it more than on anything else once the cores are nearly full.

The open-loop client and the bench's own reading stand in for the platform's clients, which are
not on this machine either.  On these 2 cores they compete with the platform for the CPU: a
client that gets its turn late sends late, and its lateness counts as the platform's latency.
So the bench runs the load at a raised CPU priority (``CLIENT_PRIORITY``, only for its own
process and only during the load: the services were started before and keep the default),
where the operating system allows it (root, or ``CAP_SYS_NICE``); ``client_priority`` in the
figures says whether it was raised.  At 300/s, on the same machine within the hour: ``POST``
→ ``CaseOpened`` p99 220-246 ms in four runs with the load raised by 5, 332 and 507 ms in two
at the default priority; the ``POST`` alone p99 147-166 against 235-363 ms.  Over two days,
eighteen runs with the load raised gave 207-297 ms: the raised priority takes the client's
waits out of the figure, not the machine's noise.

The mail catcher stands in for the customers' mail servers, which are not on this machine: its
spool is kept in memory (``/dev/shm``) where the machine has that file system, not on the disk
PostgreSQL and Kafka write to (see :func:`spool_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mailbox
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import openloop
from aiokafka import AIOKafkaConsumer
from http_intake import (
    ROOT,
    Harness,
    LoggedProcess,
    _preload,
    _stop,
    _wait_ready,
    complaint_posts,
    cpu_seconds,
    free_port,
    postgres_pids,
    run_queue_seconds,
    service_env,
)
from machine import IoStalls, cpu_times, percentile

from complaints_shared.topics import delete_topics

SERVICES = ("intake", "resolution", "followup", "learning")
# How much the load's CPU priority is raised (``nice`` steps), where the system allows it
CLIENT_PRIORITY = 5
# How often the stages are counted during the load (and once as it starts).  Each round
# of counts scans whole tables (12 ms of the database's CPU on average over 40 s at 300/s, and
# growing with the tables; far more with a million complaints stored): counted every second,
# the bench took 1-3% of a core from the machine it measures.
SAMPLE_SECONDS = 5.0
# A stage's completion rate is counted from its first count this long into the load: by then
# its first complaints have come through (the pipeline has filled), so what it did is compared
# with what was offered over the same time
FILLED_SECONDS = 5.0
# the stages: the database each is counted in, and what a complaint that reached it left there
REACHED = {
    "intake": ("intake", "SELECT count(*) FROM complaints"),
    "resolution": ("resolution", "SELECT count(*) FROM cases"),
    "followup": ("followup", "SELECT count(*) FROM contact_preferences"),
    "acknowledgement sent": (
        "followup",
        "SELECT count(*) FROM deliveries WHERE source_type = 'ComplaintAcknowledged'"
        " AND status = 'sent'",
    ),
    "learning": ("learning", "SELECT count(*) FROM complaint_facts"),
}


def _body(i: int, run: str) -> bytes:
    return json.dumps(
        {
            "channel": "email",
            "customer": {"name": f"Cliente {run}-{i}", "email": f"c{run}-{i}@example.pt"},
            "subject": "Encomenda atrasada",
            "description": "A minha encomenda chegou com duas semanas de atraso e ninguém"
            " respondeu aos meus e-mails.",
        }
    ).encode()


async def _transactions(conn: asyncpg.Connection, dsns: dict[str, str]) -> dict[str, int]:
    """Committed and rolled back transactions so far in each database of ``dsns`` (the
    services' and the keyring's, which every service asks for the keys it seals and opens
    with); a statement run outside a transaction counts as one."""
    names = {dsn.rsplit("/", 1)[1]: name for name, dsn in dsns.items()}
    rows = await conn.fetch(
        "SELECT datname, xact_commit + xact_rollback AS n FROM pg_stat_database"
        " WHERE datname = ANY($1::text[])",
        list(names),
    )
    return {names[r["datname"]]: int(r["n"]) for r in rows}


_COMPLAINT_ID = re.compile(rb'"complaint_id"\s*:\s*"([0-9a-fA-F-]{36})"')


def _complaint_id(body: bytes) -> str | None:
    """The id of the complaint a ``201`` answer created."""
    found = _COMPLAINT_ID.search(body)
    return found.group(1).decode().lower() if found else None


async def _count(conns: dict[str, asyncpg.Connection]) -> dict[str, int]:
    return {stage: int(await conns[db].fetchval(sql)) for stage, (db, sql) in REACHED.items()}


async def _measure(
    *,
    dsns: dict[str, str],
    port: int,
    token: str,
    rate: float,
    seconds: float,
    bootstrap: str,
    topics: tuple[str, str],
    drain_within: float,
    pids: dict[str, list[int]],
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    conns = {s: await asyncpg.connect(dsns[s]) for s in SERVICES}
    opened: dict[str, float] = {}
    published: dict[str, float] = {}  # ComplaintReceived on Kafka (intake's relay's hop)
    reader = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()

    async def read_opened() -> None:
        async for record in reader:
            headers = {k: v.decode() for k, v in record.headers or ()}
            kind = headers.get("ce_type", "").rsplit(".", 1)[-1]
            seen = {"CaseOpened": opened, "ComplaintReceived": published}.get(kind)
            if seen is not None and record.key:
                seen.setdefault(record.key.decode(), record.timestamp / 1000)

    watching = asyncio.create_task(read_opened())
    samples: list[tuple[float, dict[str, int]]] = []

    async def sample() -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            samples.append((time.perf_counter(), await _count(conns)))

    request = complaint_posts(token, lambda i: _body(i, run))

    stats = await asyncpg.connect(dsns["intake"])  # the sampler uses the others meanwhile
    # the bench's own sessions (its counts scan whole tables) are not the services' cost
    own = {c.get_server_pid() for c in (*conns.values(), stats)}

    def services_postgres() -> list[int]:
        return [pid for pid in postgres_pids() if pid not in own]

    services = {s: pids[s] for s in SERVICES if s in pids}  # each one process (and threads)
    pids = {**pids, "postgres": services_postgres()}
    # what the start-up wrote is written out first; the stalls' sampler runs at the default
    # priority, as the services
    with IoStalls() as stalls:
        cpu_before = cpu_seconds(pids)
        xacts_before = await _transactions(stats, dsns)
        with raised_priority(CLIENT_PRIORITY) as client_priority:
            t0 = time.perf_counter()
            samples.append((t0, await _count(conns)))
            sampling = asyncio.create_task(sample())
            (busy_at, ran_at), client_at = cpu_times(), time.process_time()
            queued_at, started = run_queue_seconds(services), time.perf_counter()
            load = await openloop.run("127.0.0.1", port, request, rate, seconds, keep=_complaint_id)
            queued_now, ended = run_queue_seconds(services), time.perf_counter()
            (busy_now, ran_now), client_now = cpu_times(), time.process_time()
    loaded = time.perf_counter()
    sampling.cancel()  # before the drain's own counts: they use the same connections
    await asyncio.gather(sampling, return_exceptions=True)
    drained_at: float | None = None
    while time.perf_counter() - loaded < drain_within:
        counts = await _count(conns)
        if all(counts[s] >= counts["intake"] for s in REACHED):
            drained_at = time.perf_counter()
            break
        await asyncio.sleep(0.5)
    pids["postgres"] = sorted(set(pids["postgres"]) | set(services_postgres()))
    cpu_after = cpu_seconds(pids)
    xacts_after = await _transactions(stats, dsns)
    await stats.close()
    await asyncio.sleep(1)  # the last CaseOpened records
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    await reader.stop()
    received = {
        str(r["id"]): r["received_at"].timestamp()
        for r in await conns["intake"].fetch("SELECT id, received_at FROM complaints")
    }
    acknowledged = {
        str(r["complaint_id"]): r["sent_at"].timestamp()
        for r in await conns["followup"].fetch(
            "SELECT complaint_id, sent_at FROM deliveries"
            " WHERE source_type = 'ComplaintAcknowledged' AND status = 'sent'"
        )
    }
    for c in conns.values():
        await c.close()

    during = [(t, c) for t, c in samples if t0 <= t <= loaded]
    filled = [(t, c) for t, c in during if t >= t0 + FILLED_SECONDS]
    if len(filled) < 2:  # a load too short to count after filling: from its start
        filled = during
    second_half = [(t, c) for t, c in during if t >= t0 + seconds / 2]
    stages: dict[str, Any] = {}
    for s in REACHED:
        first, last = (filled[0], filled[-1]) if len(filled) > 1 else (None, None)
        rate_done = (
            (last[1][s] - first[1][s]) / (last[0] - first[0]) if first and last else float("nan")
        )
        growth = float("nan")
        if len(second_half) > 1:
            (ta, ca), (tb, cb) = second_half[0], second_half[-1]
            backlog_a, backlog_b = ca["intake"] - ca[s], cb["intake"] - cb[s]
            growth = (backlog_b - backlog_a) / (tb - ta)
        stages[s] = {
            "completed_per_s": round(rate_done, 1),
            "backlog_growth_per_s": round(growth, 1),
            "backlog_at_end": (during[-1][1]["intake"] - during[-1][1][s]) if during else None,
        }
    to_opened = sorted(opened[cid] - received[cid] for cid in opened if cid in received)
    # the two hops of receipt → CaseOpened: intake's relay (receipt → ComplaintReceived on
    # Kafka), then resolution (its fetch, its batch, its relay: → CaseOpened on Kafka)
    to_published = sorted(published[cid] - received[cid] for cid in published if cid in received)
    published_to_opened = sorted(opened[cid] - published[cid] for cid in opened if cid in published)
    # from when the POST was due (the open-loop client's clock): what a client waits for, its
    # request's queueing, HTTP handling and wait for its group included
    from_post = sorted(opened[cid] - load.due_at[cid] for cid in opened if cid in load.due_at)
    to_mailed = sorted(acknowledged[cid] - received[cid] for cid in acknowledged if cid in received)

    return {
        "offered_per_s": rate,
        "seconds": seconds,
        # from the load's start until the last answer (at most 10 s after the load's end)
        "answered_within_seconds": round(load.seconds, 3),
        "posted": load.offered,
        "accepted": load.ok,
        "failed": load.failed,
        # still waiting 10 s after the load's end, given up: sent, or in the client's own queue
        "unanswered": load.unanswered,
        "unsent": load.unsent,
        "statuses": load.statuses,
        "client_priority": client_priority,
        "io_stalls_ms": stalls.figures,
        # of all CPUs' time during the load: busy, and taken by this process (the load's client)
        "cpu_busy_share": {
            "all": round((busy_now - busy_at) / (ran_now - ran_at), 3),
            "load_client": round((client_now - client_at) / (ran_now - ran_at), 3),
        },
        # of the load's time, how long each service waited to run on a CPU when it could run
        "run_queue_share": {
            s: round((queued_now[s] - queued_at[s]) / (ended - started), 3) for s in queued_now
        }
        if queued_at is not None and queued_now is not None
        else None,
        "post_p50_ms": round(load.percentile(50) * 1000, 1),
        "post_p99_ms": round(load.percentile(99) * 1000, 1),
        "stages": stages,
        "drained_after_s": round(drained_at - loaded, 1) if drained_at else None,
        "post_to_case_opened_p50_ms": round(percentile(from_post, 50) * 1000, 1),
        "post_to_case_opened_p99_ms": round(percentile(from_post, 99) * 1000, 1),
        "post_to_case_opened_max_ms": round(max(from_post, default=float("nan")) * 1000, 1),
        "received_to_case_opened_p50_ms": round(percentile(to_opened, 50) * 1000, 1),
        "received_to_case_opened_p99_ms": round(percentile(to_opened, 99) * 1000, 1),
        "received_to_case_opened_max_ms": round(max(to_opened, default=float("nan")) * 1000, 1),
        "cases_opened_seen": len(to_opened),
        "received_to_published_p50_ms": round(percentile(to_published, 50) * 1000, 1),
        "received_to_published_p99_ms": round(percentile(to_published, 99) * 1000, 1),
        "published_to_case_opened_p50_ms": round(percentile(published_to_opened, 50) * 1000, 1),
        "published_to_case_opened_p99_ms": round(percentile(published_to_opened, 99) * 1000, 1),
        # the acknowledgement e-mail handed to the SMTP server (followup's ``sent_at``)
        "received_to_acknowledgement_sent_p50_ms": round(percentile(to_mailed, 50) * 1000, 1),
        "received_to_acknowledgement_sent_p99_ms": round(percentile(to_mailed, 99) * 1000, 1),
        # CPU per accepted complaint, load and drain together (PostgreSQL: the services'
        # sessions, not those that ended meanwhile nor the bench's own counting ones)
        "transactions_per_complaint": {
            s: round((xacts_after[s] - xacts_before[s]) / max(load.ok, 1), 2) for s in xacts_after
        },
        "cpu_ms_per_complaint": {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / max(load.ok, 1), 2)
            for name in cpu_after
        },
    }


@contextlib.contextmanager
def raised_priority(steps: int) -> Iterator[str]:
    """This process's CPU priority raised by ``steps`` (its ``nice`` value lowered) while the
    block runs, then set back; processes it starts meanwhile would inherit it.  Yields what it
    ran at: ``"raised by N"``, or ``"default (not permitted)"`` where the system refuses."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, before - steps)
    except PermissionError:
        raised = False
    else:
        raised = True
    try:
        yield f"raised by {steps}" if raised else "default (not permitted)"
    finally:
        if raised:  # lowering one's own priority is always allowed
            os.setpriority(os.PRIO_PROCESS, 0, before)


def spool_parent() -> Path | None:
    """Where the mail catcher's spool goes: ``/dev/shm`` (memory) where there is one to write
    to, else the default temporary directory (``None``).

    On the disk the database and the broker write to, the catcher's file per message (create,
    write, rename: 300 a second) disturbed what it stands beside.  In py-spy it spent 56-61% of
    its time creating those files, in some runs with 11-20% of a core of kernel CPU, and the
    whole pipeline's latency rose with it.  Three runs each, alternating, at 300/s: receipt →
    ``CaseOpened`` p99 301-366 ms with the spool on disk, 205-242 ms in memory; acknowledgement
    e-mails p99 1.9-3.6 s against 0.37-0.69 s.  The customers' mail servers are elsewhere."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def _mail_catcher(spool: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A local SMTP server spooling to a Maildir under ``spool``; the process and its port."""
    mail = spool / "maildir"  # Maildir makes its folders only for a path that does not exist
    mailbox.Maildir(mail, create=True)
    port = free_port()
    proc = LoggedProcess(
        [
            *(sys.executable, str(ROOT / "deploy" / "local" / "mail_catcher.py")),
            *("--port", str(port), "--maildir", str(mail)),
        ],
        log=log,
    )
    return proc, port


def _service(
    h: Harness,
    service: str,
    *,
    databases: dict[str, str],
    prefix: str,
    port: int,
    smtp: int,
    services_from: Path | None,
) -> subprocess.Popen[bytes]:
    """One service's process on ``port``, on its database, the shared keyring and ``smtp``."""
    return LoggedProcess(
        [sys.executable, "-m", f"complaints_{service}"],
        env={
            **service_env(services_from),
            **h.service_env(databases[service], databases["keyring"], prefix, port),
            "COMPLAINTS_SMTP_HOST": "127.0.0.1",
            "COMPLAINTS_SMTP_PORT": str(smtp),
        },
        log=h.log(f"{prefix}{service}"),
    )


def bench(
    h: Harness,
    *,
    rate: float,
    seconds: float,
    kafka_pid: int | None = None,
    services_from: Path | None = None,
    stored: int = 0,
    settle: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Start the platform, offer the load, stop it; the figures.  With ``stored``, intake's
    database holds that many complaints before the load (as ``bench_stored`` preloads them:
    each customer's history and duplicates are looked up among them), and ``settle`` runs
    after the preload, before the load."""
    suffix = os.urandom(3).hex()
    databases = {s: h.create_database(f"bench_{s}_{suffix}") for s in (*SERVICES, "keyring")}
    prefix = f"benchpipe{suffix}."
    in_memory = spool_parent()
    spool = Path(tempfile.mkdtemp(prefix="bench-mail-", dir=in_memory))
    catcher, smtp = _mail_catcher(spool, h.log(f"{prefix}mail_catcher"))
    procs: list[subprocess.Popen[bytes]] = [catcher]
    ports = {s: free_port() for s in SERVICES}
    try:
        for s in SERVICES:
            procs.append(
                _service(
                    h,
                    s,
                    databases=databases,
                    prefix=prefix,
                    port=ports[s],
                    smtp=smtp,
                    services_from=services_from,
                )
            )
        # the load meets the steady state, not the start: every check ok
        for s, proc in zip(SERVICES, procs[1:], strict=True):
            _wait_ready(f"http://127.0.0.1:{ports[s]}", proc, all_ok=True)
        dsns = {s: f"{h.server}/{db}" for s, db in databases.items()}  # the keyring's too
        preloaded: dict[str, Any] = {}
        if stored:
            t0 = time.monotonic()
            preloaded["history_plan"] = asyncio.run(_preload(dsns["intake"], stored))
            preloaded["preload_seconds"] = round(time.monotonic() - t0, 1)
        if settle is not None:
            settle()
        figures = asyncio.run(
            _measure(
                dsns=dsns,
                port=ports["intake"],
                token=h.token,
                rate=rate,
                seconds=seconds,
                bootstrap=h.bootstrap,
                # ComplaintReceived's and CaseOpened's: each hop's share of the latency
                topics=(f"{prefix}complaints.intake.v2", f"{prefix}complaints.resolution.v2"),
                drain_within=max(60.0, seconds * 2),
                pids={
                    "mail catcher": [procs[0].pid],
                    **{s: [p.pid] for s, p in zip(SERVICES, procs[1:], strict=True)},
                    "kafka": [kafka_pid] if kafka_pid else [],
                },
            )
        )
        spooled = "memory" if in_memory is not None else "disk"
        return {**figures, "stored": stored, "mail_spool": spooled, **preloaded}
    finally:
        for proc in procs:
            _stop(proc)
        shutil.rmtree(spool, ignore_errors=True)
        asyncio.run(delete_topics(h.bootstrap, prefix))


# what each service catching up is measured by: the stages it completes (see REACHED)
CATCHING_UP = {
    "resolution": ("resolution",),
    "followup": ("followup", "acknowledgement sent"),
    "learning": ("learning",),
}


async def _post_all(port: int, token: str, complaints: int, rate: float) -> int:
    """Offer ``complaints`` at ``rate``/s; the number accepted."""
    run = uuid.uuid4().hex[:6]
    load = await openloop.run(
        "127.0.0.1", port, complaint_posts(token, lambda i: _body(i, run)), rate, complaints / rate
    )
    return load.ok


async def _published(dsn: str, within: float = 120) -> None:
    """Until intake's outbox has nothing left to publish."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within
        while await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"intake's outbox not published within {within:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def _catching_up(
    dsn: str, stages: tuple[str, ...], target: int, pid: int, within: float
) -> dict[str, Any]:
    """Sample ``stages``' counts every 0.1 s until each reached ``target``: each stage's rate
    from its first count above zero (the consumer joined and began) to its last, and the
    process's CPU over the same time."""
    conn = await asyncpg.connect(dsn)
    first: dict[str, tuple[float, int, float]] = {}  # when, count, CPU seconds
    done: dict[str, tuple[float, float]] = {}
    deadline = time.monotonic() + within
    try:
        while len(done) < len(stages) and time.monotonic() < deadline:
            now = time.perf_counter()
            cpu = cpu_seconds({"p": [pid]})["p"]
            for stage in stages:
                if stage in done:
                    continue
                try:
                    n = int(await conn.fetchval(REACHED[stage][1]))
                except asyncpg.UndefinedTableError:  # the service has not migrated yet
                    n = 0
                if n and stage not in first:
                    first[stage] = (now, n, cpu)
                if n >= target:
                    done[stage] = (now, cpu)
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    out: dict[str, Any] = {}
    for stage in stages:
        if stage not in done or stage not in first:
            out[stage] = {"caught_up": False}
            continue
        (t0, n0, c0), (t1, c1) = first[stage], done[stage]
        out[stage] = {
            "caught_up": True,
            "seconds": round(t1 - t0, 2),
            "per_s": round((target - n0) / (t1 - t0), 1) if t1 > t0 else float("nan"),
            "cpu_ms_per_complaint": round((c1 - c0) * 1000 / max(target - n0, 1), 2),
        }
    return out


def catch_up(
    h: Harness,
    *,
    complaints: int,
    rate: float = 150,
    services_from: Path | None = None,
    settle: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """A backlog: intake alone accepts ``complaints`` (offered at ``rate``/s) and publishes
    them; then resolution, followup and learning start one after another, each alone on the
    machine but for the ones caught up already, and each catches up with the backlog: its
    rate once its consumer began, and its CPU per complaint."""
    suffix = os.urandom(3).hex()
    databases = {s: h.create_database(f"bench_{s}_{suffix}") for s in (*SERVICES, "keyring")}
    dsns = {s: f"{h.server}/{databases[s]}" for s in SERVICES}
    prefix = f"benchcatch{suffix}."
    spool = Path(tempfile.mkdtemp(prefix="bench-mail-", dir=spool_parent()))
    catcher, smtp = _mail_catcher(spool, h.log(f"{prefix}mail_catcher"))
    procs: list[subprocess.Popen[bytes]] = [catcher]
    ports = {s: free_port() for s in SERVICES}

    def start(s: str) -> subprocess.Popen[bytes]:
        proc = _service(
            h,
            s,
            databases=databases,
            prefix=prefix,
            port=ports[s],
            smtp=smtp,
            services_from=services_from,
        )
        procs.append(proc)
        return proc

    try:
        intake = start("intake")
        _wait_ready(f"http://127.0.0.1:{ports['intake']}", intake, all_ok=True)
        accepted = asyncio.run(_post_all(ports["intake"], h.token, complaints, rate))
        asyncio.run(_published(dsns["intake"]))
        if settle is not None:
            settle()
        figures: dict[str, Any] = {"complaints": accepted, "services": {}}
        for s, stages in CATCHING_UP.items():
            proc = start(s)
            figures["services"][s] = asyncio.run(
                _catching_up(dsns[s], stages, accepted, proc.pid, within=max(120, accepted / 20))
            )
        return figures
    finally:
        for proc in procs:
            _stop(proc)
        shutil.rmtree(spool, ignore_errors=True)
        asyncio.run(delete_topics(h.bootstrap, prefix))
