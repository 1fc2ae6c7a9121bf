"""The similar-complaints index of one instance, kept up to date from ``complaint_facts``.

Every instance reads the same table, whatever partitions its consumer holds: each change of a
complaint's text takes the next ``text_version``, and the index reads what changed since the
highest version it has seen.  Versions may commit out of order, so it reads again from
``MARGIN`` versions back and skips what it has.  Vectorising and searching run on one worker
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg

from complaints_learning.similarity import Match, SimilarIndex

MARGIN = 2000  # versions read again: more than the text changes in flight at any time
BATCH = 5000
REFRESH_SECONDS = 1.0


class SimilarSearch:
    def __init__(self) -> None:
        self.index = SimilarIndex()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="similar-index")
        self._refreshing = asyncio.Lock()

    async def _run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: fn(*args, **kw)
        )

    async def refresh(self, pool: asyncpg.Pool) -> int:
        """Take in what changed since the last look; how many texts changed."""
        changed = 0
        async with self._refreshing:
            while True:
                since = max(0, self.index.version - MARGIN)
                rows = await pool.fetch(
                    "SELECT complaint_id, text_version FROM complaint_facts"
                    " WHERE text_version > $1 ORDER BY text_version LIMIT $2",
                    since,
                    BATCH,
                )
                new = [
                    r
                    for r in rows
                    if (self.index.version_of(str(r["complaint_id"])) or -1) < r["text_version"]
                ]
                if new:
                    texts = await pool.fetch(
                        "SELECT complaint_id, text_version, text FROM complaint_facts"
                        " WHERE complaint_id = ANY($1::uuid[])",
                        [r["complaint_id"] for r in new],
                    )
                    await self._run(
                        self.index.apply,
                        [(str(t["complaint_id"]), t["text_version"], t["text"]) for t in texts],
                    )
                    changed += len(new)
                if len(rows) < BATCH or not new:
                    return changed

    async def rank(self, query: str, **kw: Any) -> list[Match]:
        result: list[Match] = await self._run(self.index.rank, query, **kw)
        return result


async def keep_index(search: SimilarSearch, pool: asyncpg.Pool) -> None:
    """Catch up at start, then every second."""
    while True:
        await search.refresh(pool)
        await asyncio.sleep(REFRESH_SECONDS)
