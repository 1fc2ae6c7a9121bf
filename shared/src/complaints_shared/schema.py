"""Schema migrations applied at start-up: numbered SQL files, each once, under a lock."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

_LOCK_KEY = 0x636F6D706C61696E  # any constant: serialises concurrent starters of one database


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str


def package_migrations(package: str, prefix: str) -> list[Migration]:
    """The ``NNN_*.sql`` files of a package's ``migrations`` folder, in name order."""
    folder = resources.files(package).joinpath("migrations")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(f"{prefix}/{f.name}", f.read_text(encoding="utf-8")) for f in files]


def shared_migrations() -> list[Migration]:
    """The event store, outbox and inbox schema that every service database holds."""
    return package_migrations("complaints_shared", "shared")


async def migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction; return their names.
    Everything runs under the lock, the bookkeeping table's creation too (two instances
    starting on a new database at once both ran ``CREATE TABLE IF NOT EXISTS``, and one
    failed on the catalog's unique index)."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for m in migrations:
            if m.name in done:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", m.name)
            log.info("applied migration %s", m.name)
            applied.append(m.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied
