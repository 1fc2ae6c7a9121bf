"""An open-loop HTTP/1.1 load: requests at a fixed rate, whatever the server's pace.

Each request is due at ``start + i / rate``; it goes out on the keep-alive connection freed
last (at a low rate the same few stay in use), or on a new one where the server has closed
that one meanwhile (its keep-alive timeout: the request is not lost to the race with the
close), and its latency counts from when it was due (a slow server is not allowed to lower
the offered load, so queueing shows in the latency: no coordinated omission).  The
client is plain asyncio streams, light enough to leave the cores to the servers.  With
``keep``, what it reads from each answer's body (a created resource's id) is kept with the
request's due time on the wall clock, so that a later effect of the request (an event on
Kafka) can be timed from when the request was due.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from machine import percentile


@dataclass
class Outcome:
    offered: int = 0
    ok: int = 0
    failed: int = 0  # answered with an error status, or its connection lost
    # still waiting when the client stopped (10 s after the load's end): sent but not answered,
    # or never sent (in the client's own queue: every connection was busy)
    unanswered: int = 0
    unsent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, of the answered ones
    seconds: float = 0.0
    # with ``keep``: what it read from each answered body → when that request was due (epoch s)
    due_at: dict[str, float] = field(default_factory=dict)

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, (await reader.readexactly(length)) if length else b""


async def run(
    host: str,
    port: int,
    request: Callable[[int], bytes],
    rate: float,
    seconds: float,
    connections: int = 64,
    keep: Callable[[bytes], str | None] | None = None,
) -> Outcome:
    """Offer ``rate`` requests/s for ``seconds``; ``request(i)`` gives the i-th request's
    bytes; ``keep`` reads what to keep of a 2xx answer's body (see :attr:`Outcome.due_at`).
    Returns what came back (requests still waiting 10 s after the end are given up, and counted
    as unanswered or unsent)."""
    out = Outcome()
    free: asyncio.LifoQueue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    free = asyncio.LifoQueue()
    for _ in range(connections):
        free.put_nowait(await asyncio.open_connection(host, port))
    pending: set[asyncio.Task[None]] = set()
    sent: set[int] = set()  # on the wire, not yet answered

    async def one(i: int, due: float) -> None:
        reader, writer = await free.get()
        if reader.at_eof():  # closed by the server while it was not in use
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
        sent.add(i)
        try:
            writer.write(request(i))
            status, body = await _read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
            sent.discard(i)
            out.failed += 1
            writer.close()
            free.put_nowait(await asyncio.open_connection(host, port))
            return
        sent.discard(i)
        out.statuses[status] = out.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            out.ok += 1
            out.latencies.append(time.perf_counter() - due)
            if keep is not None and (kept := keep(body)) is not None:
                out.due_at[kept] = wall + (due - start)
        else:
            out.failed += 1
        free.put_nowait((reader, writer))

    start, wall = time.perf_counter(), time.time()
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        task = asyncio.create_task(one(i, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
        out.offered += 1
    _, late = await asyncio.wait(pending, timeout=10) if pending else (set(), set())
    out.unanswered, out.unsent = len(sent), len(late) - len(sent)
    for task in late:
        task.cancel()
    out.seconds = time.perf_counter() - start
    while not free.empty():
        _, writer = free.get_nowait()
        writer.close()
    return out
