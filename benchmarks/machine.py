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
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

ROUND_TRIPS = 2000


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


if __name__ == "__main__":
    print(describe(wake_up_round_trips()))
