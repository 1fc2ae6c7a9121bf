"""Pruning of operational copies after the periods the policy sets (``[retention]``).

Invariants: only rows whose work is done are pruned (published outbox rows, consumed-event
ids, answered idempotency keys, messages no longer pending); each statement deletes at most
``prune_batch`` rows it could lock (``FOR UPDATE SKIP LOCKED``), so several replicas pruning at
once neither wait on nor double each other, and a long backlog goes in short transactions.
The events are never pruned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from complaints_shared.eventstore import Clock
from complaints_shared.policy import RetentionPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prune:
    """Rows of ``table`` matching ``done`` (SQL; ``$1`` is the cutoff) older than the period."""

    table: str
    done: str
    period: Callable[[RetentionPolicy], timedelta]


SHARED: tuple[Prune, ...] = (
    Prune("outbox", "sent_at IS NOT NULL AND sent_at < $1", lambda r: r.outbox_sent),
    Prune("inbox", "processed_at < $1", lambda r: r.inbox),
)


async def prune_once(
    pool: asyncpg.Pool, rules: Sequence[Prune], policy: RetentionPolicy, now: Clock
) -> dict[str, int]:
    """Prune every rule's rows once (in batches); return how many went, by table."""
    removed: dict[str, int] = {}
    for rule in rules:
        cutoff = now() - rule.period(policy)
        total = 0
        while True:
            status = await pool.execute(
                f"DELETE FROM {rule.table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {rule.table}"
                f" WHERE {rule.done} LIMIT {policy.prune_batch} FOR UPDATE SKIP LOCKED))",
                cutoff,
            )
            n = int(status.rsplit(" ", 1)[-1])
            total += n
            if n < policy.prune_batch:
                break
        removed[rule.table] = total
    return removed


async def run_pruning(
    pool: asyncpg.Pool, rules: Sequence[Prune], policy: RetentionPolicy, now: Clock
) -> None:
    """Prune every ``prune_every``, for good (a failed round is tried again next time)."""
    while True:
        try:
            removed = await prune_once(pool, rules, policy, now)
            if any(removed.values()):
                log.info("pruned %s", ", ".join(f"{n} {t}" for t, n in removed.items() if n))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("pruning failed (%s); trying again later", type(exc).__name__)
        await asyncio.sleep(policy.prune_every.total_seconds())
