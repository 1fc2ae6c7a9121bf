"""The timer worker: fires due SLA timers from PostgreSQL (durable across restarts).

Lock order: a command appends to the case's stream and then replaces its timer rows, so the
worker never locks a timer row before it appends (that order deadlocks against a command on
the same case).  Instances share the work through a transaction-level advisory lock per case,
which no command takes; two workers on one case would also be safe, as the second's append
conflicts and it decides again on the fresh state.
"""

from __future__ import annotations

import asyncio
import logging

from complaints_resolution.domain import Case
from complaints_resolution.messages import telling
from complaints_resolution.projection import cases
from complaints_resolution.resources import ResolutionResources
from complaints_resolution.sla import on_timer
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.events import DomainEvent
from complaints_shared.service import Runtime

log = logging.getLogger(__name__)


async def fire_due(rt: Runtime, limit: int = 100) -> int:
    """Fire the timers due by the service clock; return how many changed a case."""
    now = rt.clock()
    res: ResolutionResources = rt.resources
    repository = cases(rt)
    due = await rt.pool.fetch(
        "SELECT complaint_id, key FROM timers WHERE due_at <= $1 ORDER BY due_at LIMIT $2",
        now,
        limit,
    )
    fired = 0
    for row in due:
        try:
            async with rt.transaction() as conn:
                locked = await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))",
                    f"timers:{row['complaint_id']}",
                )
                if not locked:
                    continue  # another instance has it
                key: str = row["key"]

                def decide(case: Case | None, key: str = key) -> list[DomainEvent]:
                    return on_timer(case, key, rt.policy, now) if case else []

                saved = await repository.execute(
                    conn,
                    row["complaint_id"],
                    telling(decide, res.messages, rt.policy.calendar.timezone),
                )
                if not saved.recorded:  # stale: the deadline moved or was met
                    await conn.execute(
                        "DELETE FROM timers WHERE complaint_id = $1 AND key = $2",
                        row["complaint_id"],
                        row["key"],
                    )
                fired += bool(saved.recorded)
        except ConcurrencyConflict:
            continue  # an agent changed the case meanwhile; the next round decides again
    return fired


async def run_timers(rt: Runtime) -> None:
    """Check for due timers at the policy's interval, forever."""
    interval = rt.policy.resolution.timer_poll.total_seconds()
    while True:
        try:
            await fire_due(rt)
        except asyncio.CancelledError:
            raise
        except (OSError, ConnectionError) as exc:
            log.warning("timer runner: database unavailable (%s); retrying", type(exc).__name__)
        except Exception:  # keep the runner alive: due timers are retried next round
            log.exception("timer runner: round failed; retrying")
        await asyncio.sleep(interval)
