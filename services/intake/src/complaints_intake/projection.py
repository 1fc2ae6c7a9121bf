"""The complaints read model, kept in the transaction that appends the events."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from complaints_shared.envelope import Event


async def project(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    for e in events:
        if e.type == "ComplaintReceived":
            await conn.execute(
                "INSERT INTO complaints (id, status, channel, category, severity, subject,"
                " received_at, version) VALUES ($1, 'received', $2, $3, $4, $5, $6, $7)",
                e.stream_id,
                e.data["channel"],
                e.data["category"],
                e.data["severity"],
                e.data["subject"],
                e.occurred_at,
                e.version,
            )
