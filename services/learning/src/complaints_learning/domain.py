"""Problems: recurring root causes across complaints, their corrective actions, and whether
the fix held (no I/O).  A problem's identity is its signature, so deciding twice on the same
complaint changes nothing: replaying the topics rebuilds the same answers."""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any, overload

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from complaints_shared.envelope import Event
from complaints_shared.errors import CommandRejected, InputRejected
from complaints_shared.events import DomainEvent
from complaints_shared.events import learning as ev
from complaints_shared.policy import Policy
from complaints_shared.vocabulary import normalise

NAMESPACE = uuid.UUID("6f1d4c1e-2b7a-4f55-9a51-6c6561726e21")


def normalise_part(value: str | None) -> str:
    """``"  Torradeira X-200 "`` → ``"torradeira x-200"``; nothing → ``"-"``."""
    return normalise(value) or "-"


@functools.lru_cache(maxsize=65_536)
def problem_id_of(signature_key: str) -> uuid.UUID:
    """The id of the problem of a signature (:attr:`Signature.key`)."""
    return uuid.uuid5(NAMESPACE, signature_key)


@dataclass(frozen=True)
class Signature:
    """A problem's identity: root cause and product.  ``category`` travels along for reading
    (the complaint's category) and is no part of the identity: a suggested category nobody
    confirmed must not split one cause on one product into several problems."""

    root_cause: str
    category: str
    product: str

    @classmethod
    def of(cls, root_cause: str, category: str | None, product: str | None) -> Signature:
        return _signature(root_cause, category, product)

    @property
    def key(self) -> str:
        return f"{self.root_cause}|{self.product}"

    @property
    def problem_id(self) -> uuid.UUID:
        return problem_id_of(self.key)

    def to_event(self) -> ev.Signature:
        return ev.Signature(
            root_cause=self.root_cause, category=self.category, product=self.product
        )


@functools.lru_cache(maxsize=65_536)  # a replay asks for the same few signatures again and again
def _signature(root_cause: str, category: str | None, product: str | None) -> Signature:
    return Signature(normalise_part(root_cause), normalise_part(category), normalise_part(product))


def recurrence_window(occurred_at: datetime, policy: Policy) -> tuple[datetime, datetime]:
    """The occurrences that count together with one at ``occurred_at``: within the policy's
    window on either side (topics and partitions may deliver a later complaint's cause first,
    and a problem must not depend on that order)."""
    window = policy.learning.recurrence_window
    return occurred_at - window, occurred_at + window


@dataclass(frozen=True)
class Action:
    action_id: str
    type: str
    owner: str
    due_at: datetime
    completed_at: datetime | None = None


class Counted(Sequence[str]):
    """The complaints a problem counts, in the order they were counted, each once: an
    immutable ordered set.

    A problem's successive states share one buffer that only grows, each state seeing its own
    first ``n`` ids.  Adding to the latest state appends to the buffer, so folding a problem's
    events takes time in their number, not its square, and a membership test takes one
    lookup; adding to an earlier state, or taking a complaint away, copies."""

    __slots__ = ("_buffer", "_index", "_n")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._buffer = list(dict.fromkeys(ids))
        self._index = {c: i for i, c in enumerate(self._buffer)}
        self._n = len(self._buffer)

    def _first(self, n: int) -> Counted:
        view = Counted.__new__(Counted)
        view._buffer, view._index, view._n = self._buffer, self._index, n
        return view

    def add(self, complaint_id: str) -> Counted:
        if complaint_id in self:
            return self
        if len(self._buffer) != self._n:  # an earlier state: the buffer went on without it
            return Counted([*self, complaint_id])
        self._buffer.append(complaint_id)
        self._index[complaint_id] = self._n
        return self._first(self._n + 1)

    def without(self, complaint_id: str) -> Counted:
        if complaint_id not in self:
            return self
        return Counted(c for c in self if c != complaint_id)

    def __contains__(self, complaint_id: object) -> bool:
        i = self._index.get(complaint_id)  # type: ignore[call-overload]
        return i is not None and i < self._n

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[str]:
        return itertools.islice(self._buffer, self._n)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[str, ...]: ...

    def __getitem__(self, i: int | slice) -> str | tuple[str, ...]:
        return tuple(self)[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Counted | tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Counted({list(self)!r})"


@dataclass(frozen=True)
class Problem:
    problem_id: uuid.UUID
    signature: Signature
    complaints: Counted
    actions: tuple[Action, ...] = ()
    fixed_at: datetime | None = None  # when the last planned action was completed
    resolved_at: datetime | None = None
    recurrences_after_fix: int = 0
    version: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.complaints, Counted):  # ids given as a tuple or list
            object.__setattr__(self, "complaints", Counted(self.complaints))

    @property
    def status(self) -> str:
        if self.resolved_at is not None:
            return "resolved"
        if self.fixed_at is not None:
            return "fixed"
        return "fixing" if self.actions else "open"


def evolve(p: Problem | None, e: Event[DomainEvent]) -> Problem | None:
    d = e.payload
    if isinstance(d, ev.ProblemOpened):
        s = d.signature
        return Problem(
            e.stream_id,
            Signature(s.root_cause, s.category, s.product),
            Counted(str(c) for c in d.complaint_ids),
            version=e.version,
        )
    if p is None:
        return None
    changes: dict[str, Any] = {}  # with the version, one copy of the state per event
    match d:
        case ev.RecurrenceDetected():
            changes = {"complaints": p.complaints.add(str(d.complaint_id))}
        case ev.OccurrenceWithdrawn():
            changes = {"complaints": p.complaints.without(str(d.complaint_id))}
        case ev.RecurrenceAfterFix():
            changes = {
                "complaints": p.complaints.add(str(d.complaint_id)),
                "fixed_at": None,
                "resolved_at": None,
                "recurrences_after_fix": p.recurrences_after_fix + 1,
            }
        case ev.CorrectiveActionPlanned():
            action = Action(d.action_id, d.type, d.owner, d.due_at)
            changes = {"actions": (*p.actions, action), "fixed_at": None}
        case ev.CorrectiveActionCompleted():
            actions = tuple(
                replace(a, completed_at=e.occurred_at) if a.action_id == d.action_id else a
                for a in p.actions
            )
            done = all(a.completed_at for a in actions)
            changes = {"actions": actions, "fixed_at": e.occurred_at if done else None}
        case ev.ProblemResolved():
            changes = {"resolved_at": e.occurred_at}
    return replace(p, version=e.version, **changes)


def resume(p: Problem | None, events: Iterable[Event[DomainEvent]]) -> Problem | None:
    """The state after ``events``, from ``p`` (the state before them)."""
    for e in events:
        p = evolve(p, e)
    return p


def fold(events: Iterable[Event[DomainEvent]]) -> Problem | None:
    return resume(None, events)


def counted_by(p: DomainEvent) -> tuple[uuid.UUID, ...]:
    """The complaints an event counts for its problem."""
    if isinstance(p, ev.ProblemOpened):
        return p.complaint_ids
    if isinstance(p, ev.RecurrenceDetected | ev.RecurrenceAfterFix):
        return (p.complaint_id,)
    return ()


def occurrence_of(p: DomainEvent) -> uuid.UUID | None:
    """The complaint an occurrence event is about."""
    if isinstance(p, ev.RecurrenceDetected | ev.RecurrenceAfterFix | ev.OccurrenceWithdrawn):
        return p.complaint_id
    return None


def withdraw_occurrence(
    problem: Problem | None, complaint_id: str, now_counts_for: Signature
) -> list[DomainEvent]:
    """The complaint moved to another signature: it no longer counts for ``problem``."""
    if problem is None or complaint_id not in problem.complaints:
        return []
    return [
        ev.OccurrenceWithdrawn(
            problem_id=problem.problem_id,
            complaint_id=uuid.UUID(complaint_id),
            occurrences=len(problem.complaints) - 1,
            signature=now_counts_for.to_event(),
        )
    ]


def occurrence(
    problem: Problem | None,
    signature: Signature,
    complaint_id: str,
    in_window: list[str],
    safety: bool,
    happened_at: datetime | None = None,
) -> list[DomainEvent]:
    """A complaint with this root-cause signature: open the problem at the second occurrence in
    the window (the first for a safety incident), count recurrences, catch a failed fix: a
    complaint that happened (``happened_at``, when it was received) after the fix."""
    if problem is not None:
        if complaint_id in problem.complaints:
            return []
        count = len(problem.complaints) + 1
        fixed = problem.fixed_at or problem.resolved_at
        if fixed is not None and (happened_at is None or happened_at > fixed):
            return [
                ev.RecurrenceAfterFix(
                    problem_id=problem.problem_id,
                    complaint_id=uuid.UUID(complaint_id),
                    occurrences=count,
                    fixed_at=fixed,
                    signature=signature.to_event(),
                )
            ]
        return [
            ev.RecurrenceDetected(
                problem_id=problem.problem_id,
                complaint_id=uuid.UUID(complaint_id),
                occurrences=count,
                signature=signature.to_event(),
            )
        ]
    complaints = list(dict.fromkeys([*in_window, complaint_id]))
    if len(complaints) >= 2 or safety:
        return [
            ev.ProblemOpened(
                problem_id=signature.problem_id,
                signature=signature.to_event(),
                complaint_ids=tuple(uuid.UUID(c) for c in complaints),
                occurrences=len(complaints),
                reason="safety incident" if safety and len(complaints) < 2 else "recurring",
            )
        ]
    return []


class CorrectiveActionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ev.CorrectiveType
    description: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)
    ]
    owner: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    due_at: AwareDatetime


class CorrectiveActionCompletion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: str | None = Field(None, max_length=2000)


def plan_action(
    p: Problem, c: CorrectiveActionCreate, now: datetime, by: str | None = None
) -> list[DomainEvent]:
    if p.status == "resolved":
        raise CommandRejected("resolved", "plan_corrective_action", [])
    if c.due_at <= now:
        raise InputRejected("body.due_at", "must be in the future")
    return [
        ev.CorrectiveActionPlanned(
            problem_id=p.problem_id,
            action_id=uuid.uuid4().hex[:12],
            type=c.type,
            description=c.description,
            owner=c.owner,
            due_at=c.due_at,
            planned_by=by,
        )
    ]


def complete_action(
    p: Problem, action_id: str, c: CorrectiveActionCompletion, by: str
) -> list[DomainEvent]:
    action = next((a for a in p.actions if a.action_id == action_id), None)
    if action is None:
        raise InputRejected("path.action_id", f"no corrective action {action_id!r}")
    if action.completed_at is not None:
        raise CommandRejected(
            p.status, "complete_corrective_action", [], reason=f"action {action_id} is done already"
        )
    return [
        ev.CorrectiveActionCompleted(
            problem_id=p.problem_id,
            action_id=action_id,
            completed_by=by,
            outcome=c.outcome,
        )
    ]


def verify(p: Problem, now: datetime, policy: Policy) -> list[DomainEvent]:
    """A fixed problem with no recurrence for the verification window is resolved."""
    if p.fixed_at is None or p.resolved_at is not None:
        return []
    if now < p.fixed_at + policy.learning.verification_window:
        return []
    return [
        ev.ProblemResolved(
            problem_id=p.problem_id,
            fixed_at=p.fixed_at,
            verification_window_seconds=policy.learning.verification_window.total_seconds(),
            occurrences=len(p.complaints),
        )
    ]
