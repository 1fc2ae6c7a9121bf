"""Verification: a fixed problem with no recurrence during the window becomes resolved."""

from __future__ import annotations

import asyncio
import logging

from complaints_learning.domain import verify
from complaints_learning.projection import problems
from complaints_shared.errors import ConcurrencyConflict
from complaints_shared.service import Runtime

log = logging.getLogger(__name__)


async def verify_fixed(rt: Runtime) -> int:
    now = rt.clock()
    due = await rt.pool.fetch(
        "SELECT problem_id FROM problems WHERE status = 'fixed' AND fixed_at <= $1",
        now - rt.policy.learning.verification_window,
    )
    resolved = 0
    for row in due:
        try:
            async with rt.transaction() as conn:
                saved = await problems(rt).execute(
                    conn, row["problem_id"], lambda p: verify(p, now, rt.policy) if p else []
                )
                resolved += bool(saved.state and saved.state.resolved_at)
        except ConcurrencyConflict:
            continue  # a recurrence came in meanwhile: decided next round
    return resolved


async def run_verification(rt: Runtime) -> None:
    while True:
        try:
            await verify_fixed(rt)
        except asyncio.CancelledError:
            raise
        except Exception:  # keep it alive: the same problems are looked at next round
            log.exception("verification round failed; retrying")
        await asyncio.sleep(rt.policy.resolution.timer_poll.total_seconds())
