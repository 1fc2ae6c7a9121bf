"""HTTP resource: operations on learning's read models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from complaints_learning.projection import catch_up, fold_all, write_row
from complaints_shared.auth import access
from complaints_shared.consumer import start_over
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
    # first every problem's state from learning's own events, with nothing locked: the read
    # models answer meanwhile (this read grows with the problems' events)
    async with rt.transaction() as conn:
        folded = await fold_all(conn, rt.store)
    async with rt.transaction() as conn:
        for c in background.consumers:
            # first: waits for batches in flight, and no batch of the old generation commits
            await start_over(conn, c.subscription.name)
            await conn.execute("DELETE FROM inbox WHERE consumer = $1", c.subscription.name)
        await conn.execute("TRUNCATE complaint_facts, occurrences, problems")
        # what was appended since the first read (a batch, an action planned), read now that
        # no one else can write a problem's row until this commits
        await catch_up(conn, rt.store, folded)
        for f in folded.values():
            if f.problem is not None:  # its complaints' facts are empty: the replay links them
                await write_row(conn, f)
    for c in background.consumers:
        c.check_generation_soon()  # committed: this replica's consumers start over now
    return Rebuild(problems=len(folded), replaying=True)
