"""What the machine charges for waking a process: a figure to read the others by.

Every hop of the platform wakes a process that waits: a service waits on PostgreSQL and Kafka,
they wait on the service.  How much a wake-up costs depends on the machine more than on the
code.  On a virtual machine whose idle CPUs halt (no guest halt polling), a process woken on the
other CPU waits for it to come out of the halt: on the 2-core machines the figures in
``docs/capacity.md`` were measured on, a round trip between two processes on different CPUs took
about 56 µs (20 µs of CPU on each side) against 6 µs (3 µs of CPU) with both on one CPU.  A
machine that charges less for it gives the same code more complaints a second at a lower p99.

:func:`wake_up_round_trips` measures it: two processes pass a small message to and fro over a
socket pair (each blocks in ``recv`` until the other answers), pinned to two different CPUs,
then both to one.  The bench writes it into its figures (``machine``), so that runs on
different machines can be told apart.

The disk is the other thing a latency figure depends on more than the code.  PostgreSQL waits
for its write-ahead log to reach the disk at every commit; when the kernel writes back a large
batch of the page cache's dirty pages at once, those waits queue behind it.  On these machines
the kernel writes a file's dirty pages once the oldest of them is 30 s old, all of them at once:
a stage that wrote for 15 s (new table pages, Kafka's segments) left 170-180 MB, written back
in one second about 30 s after it started, while the next stage ran.  Every CPU then waited on
I/O for 50-145 ms, and intake's requests with them.  So each measured window of the bench is
an :class:`IoStalls` block: it writes the dirty pages out first (:func:`flush_page_cache`), and
reports the longest stretch in which every runnable task waited on I/O during it: a window's
p99 can then be read with its stalls beside it.

How long the disk takes to make a write durable at the time is measured too
(:func:`disk_sync`): an 8 KiB write and ``fdatasync``, as PostgreSQL's commit does with its
log, in the directory where the local database keeps its files.  On the same machine it took
0.15 ms one day and 0.55-0.7 ms another; every stage whose writers wait on their commits
(the appends, their baselines, ``eventsourcing``'s recorder most of all, which commits each
event alone) moves with it.

The interpreter, and what the machine's CPUs give it at the time, are the fourth: the services
spend most of their CPU in plain Python between library calls.  :func:`python_speed` times a
fixed piece of such code.  An interpreter built without profile-guided optimisation takes about
half as long again for it as one built with it, and on a shared virtual machine the same
interpreter can take nearly twice as long for minutes while its neighbours are busy (the figures
are in ``docs/capacity.md``).  The bench measures it before its stages and after them, so that a
run on a slower interpreter, or in a slow stretch, shows as such.

The CPUs are the fifth: near its capacity, a machine's latencies grow with every percent of
CPU it is busy, whatever the code does.  :func:`cpu_times` tells how busy it was during a window
(the pipeline's load: all services, PostgreSQL, Kafka, the mail catcher and the load's own
client share two cores there).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, TypeVar

ROUND_TRIPS = 2000
IO_PRESSURE = "/proc/pressure/io"  # Linux's pressure stall information (kernel 4.20 on)
STALL_SAMPLE_SECONDS = 0.02  # a stall that holds a p99 lasts tens of ms or more
PYTHON_TURNS = 20_000  # of python_speed's loop: about 20 ms a round
DISK_SYNCS = 200  # of disk_sync: about 0.1 s on a disk that syncs in half a millisecond


def _ping_pong(cpus: tuple[int, int], n: int) -> dict[str, float]:
    """µs of wall time and of the measuring side's CPU per round trip, the two processes
    pinned to ``cpus``."""
    here, there = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the answering side: it only echoes (its exit skips the parent's clean-up)
        try:
            here.close()
            os.sched_setaffinity(0, {cpus[1]})
            for _ in range(n + 1):
                there.sendall(there.recv(64))
        finally:
            os._exit(0)
    there.close()
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        here.sendall(b"x" * 32)  # the first trip starts the other side: not measured
        if not here.recv(64):
            raise ConnectionError("the answering process ended (its CPU could not be chosen)")
        t0, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            here.sendall(b"x" * 32)
            here.recv(64)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
    finally:
        os.sched_setaffinity(0, mask)
        here.close()
        os.waitpid(pid, 0)
    return {"wall_us": round(wall / n * 1e6, 1), "cpu_us": round(cpu / n * 1e6, 1)}


def wake_up_round_trips(n: int = ROUND_TRIPS) -> dict[str, Any]:
    """The round trip between two processes on two CPUs, and on one (``None`` where the
    machine has one CPU, or does not let a process choose its CPUs: the bench's figures are
    written all the same)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        return {
            "two_cpus": _ping_pong((cpus[0], cpus[1]), n) if len(cpus) > 1 else None,
            "one_cpu": _ping_pong((cpus[0], cpus[0]), n),
        }
    except (AttributeError, OSError):  # not Linux, or the CPUs cannot be chosen
        return {"two_cpus": None, "one_cpu": None}


class _Item:
    __slots__ = ("key", "name", "tags")

    def __init__(self, key: int, name: str, tags: tuple[int, ...]) -> None:
        self.key, self.name, self.tags = key, name, tags


def _plain_python(turns: int) -> int:
    """A service's own kind of work: a dict built and read, a string formatted and changed, an
    object made and its attributes read, a few calls and branches (no library, no I/O)."""
    total = 0
    for i in range(turns):
        record = {"key": i, "name": f"c{i}", "tags": [i, i + 1]}
        item = _Item(record["key"], record["name"].upper(), tuple(record["tags"]))
        total += len(item.name) + sum(item.tags)
        if item.name.startswith("C1"):
            total ^= item.key
    return total


def python_speed(rounds: int = 7) -> dict[str, Any]:
    """ns a turn of a fixed piece of plain Python (the best of ``rounds``), with the
    interpreter that ran it (its version and installation)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        _plain_python(PYTHON_TURNS)
        best = min(best, time.perf_counter() - t0)
    return {
        "version": platform.python_version(),
        "installed_at": sys.base_prefix,
        "ns_a_turn": round(best / PYTHON_TURNS * 1e9),
    }


def percentile(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values`` by nearest rank; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def disk_sync(directory: str | os.PathLike[str], n: int = DISK_SYNCS) -> dict[str, float]:
    """ms for an 8 KiB write and ``fdatasync`` of it in ``directory`` (p50 and p99 of ``n``,
    each over the start of one temporary file, which is removed afterwards)."""
    block = os.urandom(8192)
    took = []
    fd, path = tempfile.mkstemp(prefix=".disk-sync-", dir=directory)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            took.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    return {"p50_ms": round(percentile(took, 50), 3), "p99_ms": round(percentile(took, 99), 3)}


def describe_disk(before: dict[str, float], after: dict[str, float]) -> str:
    """One line for the table's heading: the disk's syncs before the stages and after them."""
    return (
        "an 8 KiB write made durable (fdatasync) took"
        f" p50 {before['p50_ms']:.2f} ms, p99 {before['p99_ms']:.2f} before the stages,"
        f" p50 {after['p50_ms']:.2f} ms, p99 {after['p99_ms']:.2f} after"
    )


def describe_python(before: dict[str, Any], after: dict[str, Any] | None = None) -> str:
    """One line for the table's heading: the interpreter, and its speed (before the stages
    and ``after`` them, when there were any)."""
    took = f"{before['ns_a_turn']:,} ns a turn"
    if after is not None:
        took += f" before the stages, {after['ns_a_turn']:,} after"
    return (
        f"Python {before['version']} ({before['installed_at']}): a fixed piece of plain Python"
        f" took {took}"
    )


def describe(figures: dict[str, Any]) -> str:
    """One line for the table's heading."""
    two, one = figures.get("two_cpus"), figures.get("one_cpu")
    if one is None:
        return "wake-up round trip between two processes: not measured here"
    one_text = f"{one['wall_us']:.1f} µs ({one['cpu_us']:.1f} µs CPU) on one CPU"
    if two is None:
        return f"wake-up round trip between two processes: {one_text}"
    return (
        "wake-up round trip between two processes: "
        f"{two['wall_us']:.1f} µs ({two['cpu_us']:.1f} µs CPU) on two CPUs, {one_text}"
    )


T = TypeVar("T")


def in_turn(kinds: list[T], r: int) -> list[T]:
    """``kinds`` in the order of round ``r``: each first in turn.  A stage that compares
    several kinds of work runs them in rounds, so that what the machine does meanwhile weighs
    on each alike."""
    first = r % len(kinds)
    return kinds[first:] + kinds[:first]


def cpu_times() -> tuple[float, float]:
    """Seconds all CPUs together have been busy, and have run at all, since boot (the first
    line of ``/proc/stat``: busy is everything but idle and waiting on I/O; a guest's time is
    counted in user already).  Two readings around a window give how full the machine was."""
    with open("/proc/stat", "rb") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]  # user … steal
    per_second = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / per_second, sum(ticks) / per_second


def flush_page_cache() -> None:
    """Write the page cache's dirty pages out now (``sync``), so that the kernel does not write
    back what an earlier stage wrote in the middle of the next one."""
    os.sync()


def io_stalled_seconds(fd: int) -> float | None:
    """Seconds so far in which every task that could run waited on I/O (the ``full`` line of
    :data:`IO_PRESSURE`, open as ``fd``); ``None`` where the kernel does not tell."""
    try:
        text = os.pread(fd, 512, 0)
        full = text[text.index(b"full ") :]
        return int(full.rpartition(b"total=")[2].split()[0]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


class IoStalls:
    """A measured window: entering it writes the page cache out (:func:`flush_page_cache`: what
    was written before is not written back during it); while the ``with`` block runs, every
    :data:`STALL_SAMPLE_SECONDS`, how long every task that could run waited on I/O.
    :attr:`total_ms` sums it (each commit's wait for the disk counts while nothing else runs);
    :attr:`longest_ms` is the longest stretch in which they waited for most of each sample, the
    disk stalled: what a window's p99 can be read by.  Both ``None`` where the kernel does not
    tell; :attr:`figures` gives them as the bench's JSON keeps them (``io_stalls_ms``).

    The sampling runs in a process of its own (:func:`watch_io_stalls`): a thread beside a
    load's client would take the interpreter's lock from it fifty times a second."""

    def __init__(self) -> None:
        self.total_ms: float | None = None
        self.longest_ms: float | None = None
        self._watcher: subprocess.Popen[bytes] | None = None

    @property
    def figures(self) -> dict[str, float | None]:
        return {"total": self.total_ms, "longest": self.longest_ms}

    def __enter__(self) -> IoStalls:
        flush_page_cache()
        if os.path.exists(IO_PRESSURE):
            self._watcher = subprocess.Popen(
                [sys.executable, __file__, "--io-stalls"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert self._watcher.stdout is not None
            self._watcher.stdout.readline()  # it has read where the stalls stand: started
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._watcher is None:
            return
        out, _ = self._watcher.communicate(timeout=10)  # its stdin closed: it stops
        with contextlib.suppress(ValueError):
            figures = json.loads(out)
            self.total_ms, self.longest_ms = figures["total_ms"], figures["longest_ms"]


def watch_io_stalls() -> dict[str, float | None]:
    """:class:`IoStalls`' sampling, until this process's standard input is closed."""
    fd = os.open(IO_PRESSURE, os.O_RDONLY)  # kept open: a read every sample, little else
    try:
        first = stalled = io_stalled_seconds(fd)
        print("started", flush=True)
        at = time.perf_counter()
        stretch = longest = 0.0
        while not select.select([sys.stdin], [], [], STALL_SAMPLE_SECONDS)[0]:
            now, stalled_now = time.perf_counter(), io_stalled_seconds(fd)
            if stalled is None or stalled_now is None:
                return {"total_ms": None, "longest_ms": None}
            if stalled_now - stalled >= (now - at) / 2:  # most of the sample: stalled
                stretch += now - at
                longest = max(longest, stretch)
            else:
                stretch = 0.0
            at, stalled = now, stalled_now
    finally:
        os.close(fd)
    if first is None or stalled is None:
        return {"total_ms": None, "longest_ms": None}
    return {"total_ms": round((stalled - first) * 1000, 1), "longest_ms": round(longest * 1000, 1)}


if __name__ == "__main__":
    if sys.argv[1:] == ["--io-stalls"]:
        print(json.dumps(watch_io_stalls()))
    else:
        print(describe(wake_up_round_trips()))
        print(describe_python(python_speed()))
