"""Which failures are the infrastructure's, and background tasks that outlive their failures."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError

from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.faults import Backoff, database_unavailable, is_transient, supervise


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.DiskFullError(""),  # 53100
        asyncpg.OutOfMemoryError(""),  # 53200
        asyncpg.TooManyConnectionsError(""),  # 53300
        asyncpg.ReadOnlySQLTransactionError(""),  # 25006: a standby after failover
        asyncpg.QueryCanceledError(""),  # 57014
        asyncpg.AdminShutdownError(""),  # 57P01
        asyncpg.CannotConnectNowError(""),  # 57P03
        asyncpg.LockNotAvailableError(""),  # 55P03
        asyncpg.SerializationError(""),  # 40001
        asyncpg.DeadlockDetectedError(""),  # 40P01
        asyncpg.ConnectionDoesNotExistError(""),  # 08003
        asyncpg.InterfaceError("connection is closed"),
        ConnectionRefusedError(),
        TimeoutError(),
        KafkaConnectionError(),
        ConcurrencyConflict(__import__("uuid").uuid4(), 1),
    ],
    ids=lambda e: type(e).__name__,
)
def test_infrastructure_failures_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UniqueViolationError(""),
        asyncpg.CheckViolationError(""),
        asyncpg.UndefinedColumnError(""),
        asyncpg.DataError(""),
        ValueError("bad value"),
        KeyError("x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_failures_of_the_work_are_not(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_a_lost_race_is_transient_but_not_an_unavailable_database() -> None:
    assert not database_unavailable(ConcurrencyConflict(__import__("uuid").uuid4(), 1))
    assert database_unavailable(asyncpg.AdminShutdownError(""))


def test_backoff_grows_to_its_ceiling_and_starts_over_after_a_success() -> None:
    b = Backoff(initial=1, maximum=5, factor=2)
    assert [b.next() for _ in range(5)] == [1, 2, 4, 5, 5]
    b.reset()
    assert b.next() == 1


async def test_a_failing_background_task_is_restarted_and_its_failures_reported() -> None:
    runs: list[int] = []
    restarts: list[tuple[str, str]] = []

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise asyncpg.UniqueViolationError("a defect, not the network")

    await asyncio.wait_for(
        supervise(
            "worker",
            job,
            backoff=Backoff(initial=0.01, maximum=0.01),
            on_restart=lambda name, exc: restarts.append((name, type(exc).__name__)),
        ),
        timeout=5,
    )
    assert runs == [0, 1, 2]
    assert restarts == [("worker", "UniqueViolationError")] * 2


async def test_only_cancellation_stops_the_supervisor() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise("forever", forever))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
