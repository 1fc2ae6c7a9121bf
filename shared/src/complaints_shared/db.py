"""Database pools.

Pooled sessions keep no state between uses: locks are transaction-level
(``pg_advisory_xact_lock``), ``LISTEN`` and session advisory locks run on dedicated connections
(the outbox relay's), and session settings are set at connect.  So a connection returned to the
pool needs no reset query (asyncpg's default sends ``RESET ALL``, ``UNLISTEN *`` and more on
every release: one round trip per use); an open transaction is still rolled back by asyncpg
itself before the connection is reused.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import asyncpg

from complaints_shared.eventstore import init_connection


def application_name(service: str) -> str:
    """How this process's database sessions name themselves (``pg_stat_activity``): the
    service, host and process id, so an operator can tell which instance holds a lock."""
    return f"complaints-{service} {socket.gethostname()[:30]} pid {os.getpid()}"


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    password: str | None = None,
    name: str | None = None,
    session: Mapping[str, str] | None = None,
) -> asyncpg.Pool:
    """An asyncpg pool whose connections speak JSON natively and carry ``name`` as their
    ``application_name`` (and the settings ``session``, set at connect).  The password comes
    from ``password``, else the DSN, ``PGPASSWORD`` or the ``PGPASSFILE`` (never from the
    code)."""
    settings = {**({"application_name": name} if name else {}), **(session or {})}
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        password=password,
        server_settings=settings or None,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset query on release (see the module's invariant)."""


async def one_at_a_time(conn: asyncpg.Connection, key: str) -> None:
    """Serialise, until the transaction ends, every transaction that takes the same ``key``
    (a transaction-level advisory lock): decisions that read what another consumer or replica
    may be writing at the same moment (the first occurrence of a signature, a survey for a
    complaint being withdrawn) see each other's committed rows instead of each deciding alone
    under READ COMMITTED."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
