"""Re-drive: list the records parked on the dead-letter topic and replay them into the consumer
that parked them, once the cause is fixed (a code fix, a corrected reference, a restored
dependency).

Invariants:
- A replay goes through the same path as a live record (``ConsumerRunner.handle_batch``): the
  inbox row, the handler's effects and its events in one transaction.  Replaying an event that
  took effect already is recognised by the inbox and changes nothing, so a replay can be
  repeated safely, and by several operators at once.
- A record that still fails is parked again (a new dead-letter record, with the new error);
  the listing shows each event once, with its latest error.
- Only the consumers of the service answering are replayed: each service re-drives its own.

Endpoints (role ``admin``): ``GET /admin/dead-letters`` and
``POST /admin/dead-letters/replay``; ``./dev redrive list|replay SERVICE`` calls them.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field

from complaints_shared.auth import access
from complaints_shared.consumer import ConsumerRunner
from complaints_shared.envelope import decode_headers
from complaints_shared.errors import NotFound
from complaints_shared.problems import PROBLEM_RESPONSES

ADMIN = access("admin")
_DLQ_HEADERS = ("dlq_",)


@dataclasses.dataclass(frozen=True, slots=True)
class Parked:
    """One dead-lettered record, as its consumer received it."""

    consumer: str
    record: ConsumerRecord  # rebuilt as it came from its origin topic
    event_id: str | None
    event_type: str | None
    error_type: str
    error_message: str
    dlq_offset: str  # partition:offset on the dead-letter topic


async def read_dead_letters(bootstrap: str, dlq_topic: str, consumers: set[str]) -> list[Parked]:
    """Every record on the dead-letter topic parked by one of ``consumers``; an event parked
    more than once appears once, with its latest error."""
    reader = AIOKafkaConsumer(
        dlq_topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    latest: dict[tuple[str, str], Parked] = {}
    try:
        await reader.start()
        tps = sorted(reader.assignment())
        ends = await reader.end_offsets(tps) if tps else {}
        while [tp for tp in tps if await reader.position(tp) < ends[tp]]:
            batch = await reader.getmany(timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    parked = _parked(r)
                    if parked is not None and parked.consumer in consumers:
                        key = (parked.consumer, parked.event_id or parked.dlq_offset)
                        latest.pop(key, None)  # the latest parking comes last
                        latest[key] = parked
    finally:
        await reader.stop()
    return list(latest.values())


def _parked(r: ConsumerRecord) -> Parked | None:
    h = decode_headers(r.headers)
    consumer = h.get("dlq_consumer")
    if consumer is None:
        return None
    original = dataclasses.replace(
        r,
        topic=h.get("dlq_origin_topic", r.topic),
        partition=int(h.get("dlq_origin_partition", r.partition)),
        offset=int(h.get("dlq_origin_offset", r.offset)),
        headers=[(k, v) for k, v in (r.headers or ()) if not k.startswith(_DLQ_HEADERS)],
    )
    return Parked(
        consumer=consumer,
        record=original,
        event_id=h.get("ce_id"),
        event_type=h.get("ce_type"),
        error_type=h.get("dlq_error_type", ""),
        error_message=h.get("dlq_error_message", ""),
        dlq_offset=f"{r.partition}:{r.offset}",
    )


async def replayed(runner: ConsumerRunner, event_ids: list[str]) -> set[str]:
    """Which of these events the consumer has taken in (its inbox holds them)."""
    rows = await runner.pool.fetch(
        "SELECT event_id::text FROM inbox WHERE consumer = $1 AND event_id::text = ANY($2)",
        runner.subscription.name,
        event_ids,
    )
    return {r["event_id"] for r in rows}


class DeadLetter(BaseModel):
    consumer: str
    event_id: str | None
    event_type: str | None
    origin: str = Field(description="topic[partition]@offset the record came from")
    error_type: str
    error_message: str
    dead_letter: str = Field(description="partition:offset on the dead-letter topic")
    status: str = Field(description="`parked`, or `replayed` once the consumer took it in")


class DeadLetters(BaseModel):
    items: list[DeadLetter]


class Replay(BaseModel):
    consumer: str | None = Field(None, description="only this consumer's records")
    event_ids: list[str] | None = Field(None, description="only these events")


class Replayed(BaseModel):
    replayed: int = Field(description="records handed to their consumer again")
    taken_in: int = Field(description="of those, now in the consumer's inbox")
    still_parked: int = Field(description="failed again: parked anew with the new error")


async def dead_letters(
    runners: dict[str, ConsumerRunner], bootstrap: str, dlq_topic: str
) -> list[tuple[Parked, str]]:
    """The records these consumers parked, each with its status (``parked``/``replayed``)."""
    if not runners:
        return []
    parked = await read_dead_letters(bootstrap, dlq_topic, set(runners))
    taken: set[str] = set()
    for name, runner in runners.items():
        ids = [p.event_id for p in parked if p.consumer == name and p.event_id]
        taken |= await replayed(runner, ids) if ids else set()
    return [(p, "replayed" if p.event_id in taken else "parked") for p in parked]


async def replay(
    runners: dict[str, ConsumerRunner],
    bootstrap: str,
    dlq_topic: str,
    *,
    consumer: str | None = None,
    event_ids: list[str] | None = None,
) -> Replayed:
    """Hand the parked records (of ``consumer``, of ``event_ids``) to their consumer again."""
    chosen = [
        p
        for p, status in await dead_letters(runners, bootstrap, dlq_topic)
        if status == "parked"
        and (consumer is None or p.consumer == consumer)
        and (event_ids is None or p.event_id in event_ids)
    ]
    for p in chosen:
        await runners[p.consumer].handle_batch([p.record])
    taken = 0
    for name, runner in runners.items():
        ids = [p.event_id for p in chosen if p.consumer == name and p.event_id]
        taken += len(await replayed(runner, ids)) if ids else 0
    return Replayed(replayed=len(chosen), taken_in=taken, still_parked=len(chosen) - taken)


def router(service: str) -> APIRouter:
    r = APIRouter(prefix="/admin/dead-letters", tags=["operations"], responses=PROBLEM_RESPONSES)

    def runners(request: Request) -> dict[str, ConsumerRunner]:
        return {c.subscription.name: c for c in request.app.state.background.consumers}

    def where(request: Request) -> tuple[str, str]:
        rt = request.app.state.runtime
        return rt.settings.kafka_bootstrap, rt.topics.dlq

    @r.get(
        "",
        summary=f"Records {service}'s consumers parked on the dead-letter topic",
        response_model=DeadLetters,
        **ADMIN,
    )
    async def list_dead_letters(request: Request) -> DeadLetters:
        return DeadLetters(
            items=[
                DeadLetter(
                    consumer=p.consumer,
                    event_id=p.event_id,
                    event_type=p.event_type,
                    origin=f"{p.record.topic}[{p.record.partition}]@{p.record.offset}",
                    error_type=p.error_type,
                    error_message=p.error_message,
                    dead_letter=p.dlq_offset,
                    status=status,
                )
                for p, status in await dead_letters(runners(request), *where(request))
            ]
        )

    @r.post(
        "/replay",
        summary="Replay parked records into the consumer that parked them (idempotent)",
        response_model=Replayed,
        **ADMIN,
    )
    async def replay_dead_letters(
        request: Request, body: Annotated[Replay | None, Body()] = None
    ) -> Replayed:
        body = body or Replay()
        mine = runners(request)
        if body.consumer is not None and body.consumer not in mine:
            raise NotFound("consumer", body.consumer)
        return await replay(mine, *where(request), consumer=body.consumer, event_ids=body.event_ids)

    return r
