"""New complaints written in groups: one transaction for the submissions that arrive together.

Under load, the submissions waiting when a group starts (up to ``MAX_GROUP``) are written in
one transaction, with one statement per kind of write (the customers' histories, their keys,
the events and outbox rows, the read-model rows, the timeline), instead of one transaction and
seven round trips each.  Each request is answered once its group has committed.  At most
``IN_FLIGHT`` groups run at once; a lone submission is a group of one and waits for nothing.

Invariants:

- **Decided as alone.**  Each submission is decided by the same rules (``receive``) on its
  customer's history as read in its group's transaction.  A customer's submissions, and those
  with the same ``Idempotency-Key``, are written one group after another: a second one waits
  until the group of the first has ended, and then sees the first as history (a repeat, a
  probable duplicate) or as the answer to replay.  (Replicas in other processes still write
  concurrently; the key's row lock keeps an ``Idempotency-Key`` single across them, as before.)
- **One fails alone.**  A submission the rules refuse writes nothing and is answered its error;
  the others go on.  When the group's transaction fails, each of its submissions is written
  again in a transaction of its own, so that an error is answered only to the submission that
  causes it; a database that is unavailable fails them all at once (each answered 503).
- **No phantom complaint.**  A submission keeps its complaint id through every attempt, so
  the keyring registers its data subject once (for a whole group at once, while its
  transaction reads; the transaction seals nothing before that has committed); when the
  submission is not written (answered from its ``Idempotency-Key``, refused, or its own
  transaction fails) and the database has no such complaint, the subject is forgotten again,
  so a customer's data export and erasure name only complaints that exist; its answer comes
  after that, so nothing its client does next finds the subject.  (With the database
  unavailable, nobody can tell: the subject stays.)
- **Languages read together.**  The language of each submission whose customer named none is
  identified when its group is first written, for the whole group one after another (and kept
  for a later attempt): the identifier walks a model of about 40 MB, one byte at a time, and
  a text read right after another finds most of the model it needs in the CPU's caches still
  (the figures: docs/capacity.md, "Language identification wants warm caches").
- **Its own trace.**  Each submission's events carry its request's trace context to the outbox.
- **Answered as stored.**  The answer is the complaint's row as the transaction wrote it, and
  an ``Idempotency-Key``'s first answer is kept in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from complaints_intake.domain import ComplaintCreate, Earlier, History, Received, receive
from complaints_intake.language import Detection, detect_language
from complaints_intake.projection import project
from complaints_intake.resources import IntakeResources
from complaints_shared.faults import database_unavailable
from complaints_shared.service import Runtime

log = logging.getLogger(__name__)

MAX_GROUP = 32
# Groups written at once: while they wait on the database, the submissions arriving form the
# next group.  Measured at 32 connections: 325 submissions/s with two, 315 with one; with four
# the groups are smaller and answers come no sooner (p50 at 160/s offered: 56 ms, 47 with two).
IN_FLIGHT = 2


@dataclass(frozen=True)
class Replay:
    """The ``Idempotency-Key`` was used before: its row (request hash, status, answer)."""

    row: asyncpg.Record | None


@dataclass(eq=False)
class Submission:
    body: ComplaintCreate
    fingerprint: str | None  # of the body, for its Idempotency-Key (None: sent without one)
    customer_key: str
    idempotency_key: str | None
    submitted_by: str | None
    trace_context: dict[str, str]
    # the same in every attempt to write it (its group's, then its own): registered with the
    # keyring once, whichever attempt commits
    complaint_id: UUID = field(default_factory=uuid4)
    # its text's language, when its customer named none: identified with its group's
    detection: Detection | None = None
    detected: bool = False
    answer: asyncio.Future[asyncpg.Record | Replay] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def detect(self, languages: tuple[str, ...]) -> None:
        """Identify the text's language (once) unless its customer named one."""
        if not self.detected:
            if self.body.customer.language is None:
                self.detection = detect_language(self.body.text, languages)
            self.detected = True

    def resolve(self, result: asyncpg.Record | Replay) -> None:
        if not self.answer.done():  # a request that gave up (its client left) is not waiting
            self.answer.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.answer.done():
            self.answer.set_exception(error)


# Every submission's reference number and its customer's history, in one round trip (each
# read is bound by the index on ``(customer_key, received_at)``).
_HISTORIES = """
SELECT nextval('complaint_reference_seq') AS seq,
       (SELECT count(*) FROM complaints WHERE customer_key = x.key AND received_at >= $2)
           AS recent,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(c.id, c.subject, c.description)), '[]')
          FROM (SELECT id, subject, description FROM complaints
                 WHERE customer_key = x.key AND received_at >= $3 AND status <> 'withdrawn'
                 ORDER BY received_at DESC LIMIT 50) c) AS candidates
  FROM unnest($1::text[]) WITH ORDINALITY AS x(key, n)
 ORDER BY x.n
"""

# The keys not used before (in one order of locks for every writer: no deadlock)
_CLAIM_KEYS = """
WITH k AS (
    INSERT INTO idempotency_keys (key, request_hash)
    SELECT * FROM unnest($1::text[], $2::text[]) AS x(key, request_hash) ORDER BY key
    ON CONFLICT DO NOTHING
    RETURNING key
)
SELECT coalesce(array_agg(key), '{}') FROM k
"""

_WRITTEN = "SELECT coalesce(array_agg(id), '{}') FROM complaints WHERE id = ANY($1::uuid[])"

_REPLAY = "SELECT request_hash, status_code, response FROM idempotency_keys WHERE key = $1"

_ANSWERED = """
UPDATE idempotency_keys i SET status_code = 201, response = x.response
  FROM unnest($1::text[], $2::jsonb[]) AS x(key, response)
 WHERE i.key = x.key
"""


class SubmissionGroups:
    """Gathers the submissions of one intake app into groups and writes each group at once.
    ``answer`` turns a stored row into the answer kept for its ``Idempotency-Key``."""

    def __init__(self, answer: Callable[[asyncpg.Record], dict[str, Any]]) -> None:
        self.answer = answer
        self._waiting: deque[Submission] = deque()
        self._running: set[asyncio.Task[None]] = set()
        # the customers and Idempotency-Keys of the groups being written: a submission of
        # theirs waits until that group has ended, so it sees the group's writes
        self._customers: set[str] = set()
        self._keys: set[str] = set()

    async def submit(
        self, rt: Runtime, res: IntakeResources, submission: Submission
    ) -> asyncpg.Record | Replay:
        """The complaint's row as stored, or the earlier answer of its Idempotency-Key."""
        self._waiting.append(submission)
        self._start(rt, res)
        return await submission.answer

    def _start(self, rt: Runtime, res: IntakeResources) -> None:
        while len(self._running) < IN_FLIGHT and (group := self._take()):
            # a context of its own: the group belongs to no one request's trace
            task = asyncio.get_running_loop().create_task(
                self._write(rt, res, group), context=contextvars.Context()
            )
            self._running.add(task)
            task.add_done_callback(functools.partial(self._done, group, rt, res))

    def _done(
        self, group: list[Submission], rt: Runtime, res: IntakeResources, task: asyncio.Task[None]
    ) -> None:
        self._running.discard(task)
        for s in group:
            self._customers.discard(s.customer_key)
            if s.idempotency_key is not None:
                self._keys.discard(s.idempotency_key)
        self._start(rt, res)

    def _take(self) -> list[Submission]:
        """The next group: the waiting submissions in order, one per customer and per
        Idempotency-Key, none of a customer or key whose group is being written (those keep
        their place for a later group)."""
        group: list[Submission] = []
        kept: deque[Submission] = deque()
        while self._waiting:
            s = self._waiting.popleft()
            if s.answer.done():
                continue  # its request gave up before it was written
            key = s.idempotency_key
            if len(group) == MAX_GROUP or s.customer_key in self._customers or key in self._keys:
                kept.append(s)
                continue
            group.append(s)
            self._customers.add(s.customer_key)
            if key is not None:
                self._keys.add(key)
        self._waiting = kept
        return group

    async def _write(self, rt: Runtime, res: IntakeResources, group: list[Submission]) -> None:
        """Write ``group`` in one transaction; on failure, each submission in its own."""
        try:
            for s in group:  # one after another, before the transaction (the module's doc)
                s.detect(rt.policy.intake.languages)
            answers = await self._transaction(rt, res, group)
        except Exception as exc:
            if len(group) == 1 or database_unavailable(exc):
                if not database_unavailable(exc):  # not written: its registration goes too
                    await _forget(rt, group)
                for s in group:
                    s.fail(exc)
                return
            for s in group:  # which one fails, if one does, is answered alone
                if not s.answer.done():  # (one the rules refused is answered already)
                    await self._write(rt, res, [s])
            return
        except BaseException:  # cancelled (the app is stopping): none was written
            for s in group:
                s.answer.cancel()
            raise
        for s, result in answers:
            s.resolve(result)

    async def _transaction(
        self, rt: Runtime, res: IntakeResources, group: list[Submission]
    ) -> list[tuple[Submission, asyncpg.Record | Replay]]:
        """The group's transaction.  The keyring registers the group's data subjects meanwhile
        (its own database: its commit overlaps the transaction's reads instead of following
        them), and the transaction waits for it before it seals anything; a submission that is
        not written after all (answered from its ``Idempotency-Key``, or refused by the rules)
        has its data subject forgotten again, and a refused one is answered after that."""
        registering = asyncio.ensure_future(
            rt.keyring.register_many([(s.complaint_id, s.customer_key) for s in group])
        )
        unwritten: list[Submission] = []  # answered from its key, or refused
        refusals: list[tuple[Submission, Exception]] = []  # the rules' errors, to answer
        try:
            return await self._attempt(rt, res, group, registering, unwritten, refusals)
        except asyncio.CancelledError:  # the app is stopping: what was registered stays
            registering.cancel()
            raise
        finally:
            # also when the transaction did not need the keys: a registration cut short may
            # still commit, and then nobody would forget it
            await asyncio.gather(registering, return_exceptions=True)
            if unwritten and not registering.cancelled() and registering.exception() is None:
                await _forget(rt, unwritten)
            for s, exc in refusals:
                s.fail(exc)

    async def _attempt(
        self,
        rt: Runtime,
        res: IntakeResources,
        group: list[Submission],
        registering: asyncio.Future[Any],
        unwritten: list[Submission],
        refusals: list[tuple[Submission, Exception]],
    ) -> list[tuple[Submission, asyncpg.Record | Replay]]:
        answers: list[tuple[Submission, asyncpg.Record | Replay]] = []
        async with rt.transaction() as conn:
            keyed = [s for s in group if s.idempotency_key is not None]
            if keyed:
                fresh = set(
                    await conn.fetchval(
                        _CLAIM_KEYS,
                        [s.idempotency_key for s in keyed],
                        [s.fingerprint for s in keyed],
                    )
                )
                for s in keyed:
                    if s.idempotency_key not in fresh:
                        answers.append((s, Replay(await conn.fetchrow(_REPLAY, s.idempotency_key))))
                        unwritten.append(s)
                group = [s for s in group if s.idempotency_key in fresh or not s.idempotency_key]
            if not group:
                return answers
            now = rt.clock()
            ip = rt.policy.intake
            rows = await conn.fetch(
                _HISTORIES,
                [s.customer_key for s in group],
                now - ip.repeat_window,
                now - ip.duplicate_window,
            )
            decided: list[tuple[Submission, UUID, Received]] = []
            for s, row in zip(group, rows, strict=True):
                history = History.of(
                    int(row["recent"]),
                    [Earlier(UUID(i), subj, desc) for i, subj, desc in row["candidates"]],
                    s.body.text,
                    ip.duplicate_similarity,
                )
                try:
                    decision = receive(
                        s.body,
                        reference=f"CMP-{now:%Y}-{int(row['seq']):06d}",
                        received_at=now,
                        history=history,
                        detection=s.detection,
                        policy=rt.policy,
                        rules=res.rules,
                        templates=res.templates,
                        submitted_by=s.submitted_by,
                    )
                except Exception as exc:  # refused (or a defect): answered to this one only
                    refusals.append((s, exc))
                    unwritten.append(s)
                    continue
                decided.append((s, s.complaint_id, decision))
            if keys := [s.idempotency_key for s, _ in refusals if s.idempotency_key]:
                await conn.execute("DELETE FROM idempotency_keys WHERE key = ANY($1)", keys)
            if not decided:
                return answers
            # the customers' data keys seal their personal data from the first event on
            await registering
            recorded = await rt.store.create_many(
                conn,
                {c: d.events for _, c, d in decided},
                {c: s.trace_context for s, c, _ in decided},
            )
            stored = await project(
                conn,
                [e for events in recorded.values() for e in events],
                rt.keyring.pseudonym_secret,
            )
            kept = [(s.idempotency_key, stored[c]) for s, c, _ in decided if s.idempotency_key]
            if kept:  # each key's first answer, for its retries
                await conn.execute(
                    _ANSWERED, [k for k, _ in kept], [self.answer(row) for _, row in kept]
                )
            answers.extend((s, stored[c]) for s, c, _ in decided)
        return answers


async def _forget(rt: Runtime, group: list[Submission]) -> None:
    """The keyring's subjects of submissions that were not written (asked of the database,
    whatever an error said: their transaction failed, or they were answered without one), so
    that no complaint that does not exist is listed as their customers' (a data export, an
    erasure).  Best effort: one left behind names a complaint that is nowhere else, and holds
    no data."""
    ids = [s.complaint_id for s in group]
    try:
        written = set(await rt.pool.fetchval(_WRITTEN, ids))
        await rt.keyring.forget([i for i in ids if i not in written])
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # a database away
        log.warning("intake: a failed submission's data subject kept: %s", type(exc).__name__)
