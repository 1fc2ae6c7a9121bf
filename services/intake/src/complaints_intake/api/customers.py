"""HTTP resource: erasure of a customer's personal data (right to erasure).

The customer's data keys are destroyed first (crypto-shredding: every personal value of theirs
in every event store, topic and backup becomes unreadable at once), then the erasure is recorded
as ``PersonalDataErased`` with intake's own copies scrubbed in that transaction; every other
service scrubs its copies when it reads the event.  A repeated request records nothing new.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter
from pydantic import BaseModel, Field

from complaints_intake.api.complaints import _public
from complaints_intake.domain import erase_personal_data
from complaints_intake.projection import erasures
from complaints_shared.auth import Actor
from complaints_shared.customers import PRIVACY, CustomerKey, rows
from complaints_shared.errors import NotFound
from complaints_shared.events.intake import customer_stream
from complaints_shared.problems import PROBLEM_RESPONSES
from complaints_shared.service import RuntimeDep

router = APIRouter(
    prefix="/customers", tags=["customers (personal data)"], responses=PROBLEM_RESPONSES
)


class ErasurePublic(BaseModel):
    customer_key: str
    complaint_ids: list[UUID] = Field(description="every complaint of the customer, now erased")
    erased_at: datetime | None = Field(description="when the erasure was (last) recorded")
    recorded: bool = Field(description="false: everything was erased already")


@router.post(
    "/{customer_key}/erasure",
    summary="Erase the customer's personal data everywhere (keys destroyed, copies scrubbed)",
    **PRIVACY,
)
async def erase_customer(customer_key: CustomerKey, rt: RuntimeDep, actor: Actor) -> ErasurePublic:
    complaint_ids = await rt.keyring.streams_of(customer_key)
    if not complaint_ids:
        raise NotFound("customer", customer_key)
    await rt.keyring.erase(customer_key)  # first: from now on nothing of theirs can be read
    async with rt.transaction() as conn:
        saved = await erasures(rt).execute(
            conn,
            customer_stream(customer_key),
            lambda already: erase_personal_data(
                already, customer_key, complaint_ids, actor.subject
            ),
        )
        last = await conn.fetchval(
            "SELECT max(occurred_at) FROM events WHERE stream_id = $1",
            customer_stream(customer_key),
        )
    return ErasurePublic(
        customer_key=customer_key,
        complaint_ids=complaint_ids,
        erased_at=last,
        recorded=bool(saved.recorded),
    )


async def subject_records(
    conn: asyncpg.Connection, complaint_ids: list[UUID]
) -> dict[str, list[dict[str, Any]]]:
    """What intake's read models keep about these complaints."""
    complaints = await conn.fetch(
        "SELECT * FROM complaints WHERE id = ANY($1::uuid[])", complaint_ids
    )
    timeline = await conn.fetch(
        "SELECT complaint_id, service, type, occurred_at, summary FROM timeline"
        " WHERE complaint_id = ANY($1::uuid[]) ORDER BY occurred_at, position",
        complaint_ids,
    )
    return {
        "complaints": [_public(c).model_dump(mode="json") for c in complaints],
        "timeline": rows(timeline),
    }
