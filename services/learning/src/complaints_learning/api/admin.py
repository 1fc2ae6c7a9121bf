"""HTTP resource: operations on learning's read models."""

from __future__ import annotations

import asyncpg
from fastapi import APIRouter, Request
from pydantic import BaseModel

from complaints_learning.domain import fold
from complaints_learning.projection import project
from complaints_shared.auth import access
from complaints_shared.consumer import start_over
from complaints_shared.envelope import Event
from complaints_shared.events import DomainEvent
from complaints_shared.service import RuntimeDep

ADMIN = access("admin")

router = APIRouter(prefix="/admin", tags=["operations"])


class Rebuild(BaseModel):
    problems: int
    replaying: bool


@router.post(
    "/rebuild",
    summary="Rebuild every projection: reset, and replay the topics from offset 0",
    description=(
        "Clears learning's read models, projects its own recorded events again and makes every"
        " replica of its consumers replay their topics from offset 0 (a new consumer-group"
        " generation). Answers once the reset is committed; the replay runs in the background."
    ),
    **ADMIN,
)
async def rebuild(request: Request, rt: RuntimeDep) -> Rebuild:
    background = request.app.state.background
    async with rt.transaction() as conn:
        for c in background.consumers:
            # first: waits for batches in flight, and no batch of the old generation commits
            await start_over(conn, c.subscription.name)
            await conn.execute("DELETE FROM inbox WHERE consumer = $1", c.subscription.name)
        await conn.execute("TRUNCATE complaint_facts, occurrences, problems")
        streams = 0
        stream: list[Event[DomainEvent]] = []  # one problem's events, as the scan reads them
        async for chunk in rt.store.scan(conn):
            for e in chunk:
                if stream and e.stream_id != stream[0].stream_id:
                    await _project(conn, stream)
                    streams, stream = streams + 1, []
                stream.append(e)
        if stream:
            await _project(conn, stream)
            streams += 1
    for c in background.consumers:
        c.check_generation_soon()  # committed: this replica's consumers start over now
    return Rebuild(problems=streams, replaying=True)


async def _project(conn: asyncpg.Connection, events: list[Event[DomainEvent]]) -> None:
    problem = fold(events)
    if problem is not None:  # the facts are empty: the replay links the complaints again
        await project(conn, events, problem, link=False)
