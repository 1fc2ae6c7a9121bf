"""Which failures are the infrastructure's (retry later) and which are the work's (park it).

A transient failure says nothing about the event or the row being processed: the database is
unreachable, restarting, read-only after a failover, out of disk, cancelled the statement,
or another writer got there first.  Retrying the same work later succeeds.  Every consumer,
the outbox relay, the background workers and the HTTP layer (503 with ``Retry-After``) use
this one classification, so a disk-full or a failover never sends good events to the
dead-letter topic.

PostgreSQL errors are classified by SQLSTATE class (not by a list of exception types, which
always misses one):

- ``08`` connection exception, ``40`` transaction rollback (serialization, deadlock),
  ``53`` insufficient resources (disk full, out of memory, too many connections),
  ``57`` operator intervention (query cancelled, admin shutdown, cannot connect now),
  ``58`` system error (I/O error);
- ``25006`` read-only SQL transaction (a standby after failover), ``55P03`` lock not
  available, ``55006`` object in use.

Anything else raised by PostgreSQL (a constraint violation, a type error) is about the work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from complaints_shared.errors import ConcurrencyConflict

log = logging.getLogger(__name__)

TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
TRANSIENT_SQLSTATES = frozenset({"25006", "55P03", "55006"})


def is_transient(exc: BaseException) -> bool:
    """True if retrying the same work later can succeed: the failure is the infrastructure's."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state[:2] in TRANSIENT_SQLSTATE_CLASSES or state in TRANSIENT_SQLSTATES
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | ConnectionError
        | ConcurrencyConflict
        | asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | KafkaError,
    )


def lost_race(exc: BaseException) -> bool:
    """A deadlock or serialization failure (SQLSTATE class 40): the transaction lost to a
    concurrent one and was rolled back; the same work can be done again at once."""
    return isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "").startswith("40")


def database_unavailable(exc: BaseException) -> bool:
    """A transient failure of the database itself (not a lost race): answered 503."""
    return (
        is_transient(exc)
        and not lost_race(exc)
        and not isinstance(exc, ConcurrencyConflict | KafkaError)
    )


class Backoff:
    """Exponential delays that start over after a success (``reset``)."""

    def __init__(self, initial: float = 0.1, maximum: float = 10.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


async def supervise(
    name: str,
    job: Callable[[], Coroutine[Any, Any, None]],
    *,
    backoff: Backoff | None = None,
    on_restart: Callable[[str, BaseException], None] | None = None,
    healthy_after: float = 60.0,
) -> None:
    """Run ``job`` until it returns: whenever it fails, start it again after a backoff.

    A background task that dies (an error at COMMIT, at ``pool.acquire``, a bug) is restarted,
    its failure logged by type and reported to ``on_restart``; the delay starts over once a
    run lasted ``healthy_after`` seconds.  A job that returns is done.
    """
    backoff = backoff or Backoff(initial=0.5, maximum=30.0)
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await job()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = exc
        if loop.time() - started >= healthy_after:
            backoff.reset()
        delay = backoff.next()
        log.error(
            "background task %s stopped (%s); restarting in %.1fs",
            name,
            type(failure).__name__,
            delay,
        )
        if on_restart is not None:
            on_restart(name, failure)
        await asyncio.sleep(delay)
