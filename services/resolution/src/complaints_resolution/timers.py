"""The timer runner: fires due SLA timers from PostgreSQL (durable across restarts)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from complaints_resolution.domain import Case
from complaints_resolution.sla import on_timer
from complaints_resolution.store import change
from complaints_shared.envelope import NewEvent
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.service import Runtime

log = logging.getLogger(__name__)


async def fire_due(rt: Runtime, limit: int = 100) -> int:
    """Fire the timers due by the service clock; return how many changed a case."""
    now = rt.clock()
    due = await rt.pool.fetch(
        "SELECT complaint_id, key FROM timers WHERE due_at <= $1 ORDER BY due_at LIMIT $2",
        now,
        limit,
    )
    fired = 0
    for row in due:
        try:
            async with rt.pool.acquire() as conn, conn.transaction():
                locked = await conn.fetchval(
                    "SELECT true FROM timers WHERE complaint_id = $1 AND key = $2"
                    " FOR UPDATE SKIP LOCKED",
                    row["complaint_id"],
                    row["key"],
                )
                if not locked:
                    continue  # another instance has it
                key: str = row["key"]

                def decide(case: Case | None, at: datetime, key: str = key) -> list[NewEvent]:
                    return on_timer(case, key, rt.policy, at) if case else []

                _, recorded = await change(conn, rt, row["complaint_id"], decide)
                if not recorded:  # stale: the deadline moved or was met
                    await conn.execute(
                        "DELETE FROM timers WHERE complaint_id = $1 AND key = $2",
                        row["complaint_id"],
                        row["key"],
                    )
                fired += bool(recorded)
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
