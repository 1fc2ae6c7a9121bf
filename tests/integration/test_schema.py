"""Schema migrations on the real server."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from complaints_shared.schema import migrate, shared_migrations

pytestmark = pytest.mark.integration


async def test_instances_starting_at_once_on_a_new_database_all_migrate_it_once(database: str):
    """Several instances of a service start together on an empty database: each one's start
    succeeds, and every migration is applied exactly once."""
    conns = [await asyncpg.connect(database) for _ in range(6)]
    try:
        results = await asyncio.gather(
            *(migrate(c, shared_migrations()) for c in conns), return_exceptions=True
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        applied = [name for r in results if isinstance(r, list) for name in r]
        assert sorted(applied) == sorted(m.name for m in shared_migrations())
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(shared_migrations())
    finally:
        for c in conns:
            await c.close()
