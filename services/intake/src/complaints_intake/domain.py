"""Complaints as customers voice them, and the decisions intake takes on them (no I/O)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Protocol, Self
from uuid import UUID

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from rapidfuzz import fuzz, process

from complaints_intake.language import MIN_CONFIDENCE, Detection
from complaints_intake.messages import Template, render
from complaints_intake.rules import IntakeRules
from complaints_intake.text import words
from complaints_shared.envelope import Event
from complaints_shared.errors import CommandRejected, InputRejected
from complaints_shared.events import DomainEvent
from complaints_shared.events import intake as ev
from complaints_shared.events import resolution as rs
from complaints_shared.policy import Policy
from complaints_shared.vocabulary import (
    CONTACT_FIELD,
    ONE_LINE,
    Channel,
    Severity,
    known_language,
    normalise,
)

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class DesiredOutcome(StrEnum):
    refund = "refund"
    replacement = "replacement"
    repair = "repair"
    repeat_performance = "repeat_performance"
    price_reduction = "price_reduction"
    apology = "apology"
    explanation = "explanation"
    other = "other"


class Status(StrEnum):
    """Intake's own state of a complaint: what its commands depend on."""

    received = "received"
    withdrawn = "withdrawn"


class ComplaintStatus(StrEnum):
    """Where a complaint is in its whole lifecycle, as intake's API shows it: intake's own
    state, then the case's progress as resolution's events tell it (``case_progress``)."""

    received = "received"
    open = "open"
    in_progress = "in_progress"
    awaiting_customer = "awaiting_customer"
    resolved = "resolved"
    closed = "closed"
    withdrawn = "withdrawn"


def case_progress(payload: DomainEvent) -> ComplaintStatus | None:
    """The lifecycle status a resolution event moves the complaint to (None: no change)."""
    match payload:
        case rs.CaseOpened():
            return ComplaintStatus.open
        case rs.ClarificationRequested():
            return ComplaintStatus.awaiting_customer
        case (
            rs.CaseAssigned()
            | rs.ClarificationReceived()
            | rs.CauseIdentified()
            | rs.SolutionProposed()
            | rs.SolutionAgreed()
            | rs.SolutionRejected()
            | rs.ActionPlanned()
            | rs.CaseReopened()
        ):
            return ComplaintStatus.in_progress
        case rs.CaseResolved():
            return ComplaintStatus.resolved
        case rs.CaseClosed():
            return ComplaintStatus.closed
    return None


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Customer(_Input):
    id: Annotated[Text, Field(max_length=100)] | None = None
    name: Annotated[Text, Field(max_length=200, pattern=ONE_LINE)] | None = None
    email: str | None = Field(None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    phone: str | None = Field(None, pattern=r"^\+?[0-9 ()./-]{5,40}$")
    postal_address: Annotated[Text, Field(max_length=500)] | None = None
    preferred_channel: Channel | None = None
    language: str | None = Field(None, pattern=r"^[a-z]{2}$", description="ISO 639-1 code")
    consent_to_other_channel: bool = Field(
        False, description="the customer agrees to be contacted on another channel than theirs"
    )

    @field_validator("language")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and not known_language(v):
            raise ValueError(f"{v!r} is not a known ISO 639-1 language")
        return v

    @model_validator(mode="after")
    def _identified(self) -> Self:
        if not (self.id or self.name or self.email or self.phone):
            raise ValueError("a customer needs an id, a name, an e-mail address or a phone number")
        return self


class PublicPost(_Input):
    url: AnyHttpUrl
    platform: Annotated[Text, Field(max_length=50)] | None = None
    audience_size: int | None = Field(None, ge=0, description="followers or views, if known")


class Attachment(_Input):
    ref: Annotated[Text, Field(max_length=500, description="an id or URL, not the file itself")]
    name: Annotated[Text, Field(max_length=200)] | None = None
    media_type: str | None = Field(None, max_length=100, pattern=r"^[\w.+-]+/[\w.+-]+$")


class ComplaintCreate(_Input):
    """A complaint as submitted through any channel."""

    channel: Channel
    customer: Customer
    subject: Annotated[Text, Field(max_length=200, pattern=ONE_LINE)]
    description: Annotated[Text, Field(max_length=5000)]
    category: str | None = Field(None, max_length=60, description="suggested when left out")
    severity: Severity | None = Field(None, description="suggested when left out")
    product: Annotated[Text, Field(max_length=200)] | None = Field(
        None, description="product or service concerned"
    )
    order_reference: Annotated[Text, Field(max_length=100)] | None = None
    safety_incident: bool = False
    public_post: PublicPost | None = None
    desired_outcome: DesiredOutcome | None = None
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)

    def reply_channel(self) -> Channel:
        """The channel the customer prefers, else the one they used."""
        return self.customer.preferred_channel or self.channel

    @property
    def text(self) -> str:
        return f"{self.subject}\n{self.description}"


class QuestionAnswer(_Input):
    question: Annotated[Text, Field(max_length=500)]
    answer: Annotated[Text, Field(max_length=2000)]


class DetailsCreate(_Input):
    """Information collected after the complaint was received."""

    note: Annotated[Text, Field(max_length=5000)] | None = None
    answers: list[QuestionAnswer] = Field(default_factory=list, max_length=50)
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not (self.note or self.answers or self.attachments):
            raise ValueError("give a note, answers or attachments")
        return self


class WithdrawCreate(_Input):
    reason: Annotated[Text, Field(max_length=1000)] | None = None


class CustomerLike(Protocol):
    @property
    def id(self) -> str | None: ...
    @property
    def name(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...


def _hash(secret: bytes, basis: str) -> str:
    # the one-shot form: 2.2 µs against 4.8 for an HMAC object, the same digest
    return hmac.digest(secret, basis.encode(), "sha256").hex()


def customer_key(customer: CustomerLike, secret: bytes) -> str:
    """A stable pseudonymous key of the customer, for repeat and duplicate detection and as the
    data subject of erasure: their id, else e-mail address, else phone digits, else normalised
    name, keyed with ``secret`` (HMAC-SHA-256), so it cannot be computed nor reversed from a
    known address without the keyring's secret."""
    if customer.id:
        return _hash(secret, f"id:{customer.id}")
    if customer.email:
        return _hash(secret, f"email:{customer.email.casefold()}")
    if customer.phone:
        return _hash(secret, "phone:" + "".join(c for c in customer.phone if c.isdigit()))
    return _hash(secret, f"name:{normalise(customer.name or '')}")


def customer_keys_matching(search: str, secret: bytes) -> list[str]:
    """The keys a list filter ``customer=<id or e-mail>`` selects."""
    return [_hash(secret, f"id:{search}"), _hash(secret, f"email:{search.casefold()}")]


@dataclass(frozen=True)
class Earlier:
    """One of the customer's earlier complaints within the duplicate window."""

    complaint_id: UUID
    subject: str
    description: str


@dataclass(frozen=True)
class History:
    """What intake knows about the customer's earlier complaints (read before deciding)."""

    recent_count: int  # within the policy's repeat window, this one excluded
    duplicate_of: UUID | None

    @classmethod
    def of(
        cls, recent_count: int, candidates: list[Earlier], text: str, similarity: float
    ) -> History:
        """The history, with the most similar earlier complaint (``similarity`` of 0..1 or
        more on normalised words, in any order) as the probable duplicate."""
        return cls(recent_count, probable_duplicate(text, candidates, similarity))


def probable_duplicate(text: str, candidates: list[Earlier], similarity: float) -> UUID | None:
    """The earlier complaint whose normalised words, in any order, are the most alike
    ``text``'s (the first of those), if ``similarity`` (0..1) alike or more.  One call for all
    candidates: ``text``'s words are sorted once, and a candidate is given up as soon as it
    cannot reach ``similarity`` (with long texts, about half the time of scoring each)."""
    if not candidates:
        return None
    found = process.extractOne(
        normalise(text),
        [normalise(f"{c.subject}\n{c.description}") for c in candidates],
        scorer=fuzz.token_sort_ratio,
        # a hair lower, as the product may round below where the quotient does (checked below)
        score_cutoff=similarity * 100 - 1e-9,
    )
    if found is None or found[1] / 100 < similarity:
        return None
    return candidates[found[2]].complaint_id


@dataclass(frozen=True)
class Complaint:
    """Intake's aggregate: what a command on a recorded complaint needs."""

    complaint_id: UUID
    status: Status
    version: int


def evolve(state: Complaint | None, e: Event[DomainEvent]) -> Complaint | None:
    if isinstance(e.payload, ev.ComplaintReceived):
        return Complaint(e.stream_id, Status.received, e.version)
    if state is None:
        return None
    status = Status.withdrawn if isinstance(e.payload, ev.ComplaintWithdrawn) else state.status
    return replace(state, status=status, version=e.version)


def fold(events: Iterable[Event[DomainEvent]]) -> Complaint | None:
    state: Complaint | None = None
    for e in events:
        state = evolve(state, e)
    return state


def erased_complaints(events: Iterable[Event[DomainEvent]]) -> frozenset[UUID]:
    """A customer's stream folded: the complaints whose personal data was erased."""
    out: set[UUID] = set()
    for e in events:
        if isinstance(e.payload, ev.PersonalDataErased):
            out.update(e.payload.complaint_ids)
    return frozenset(out)


def erase_personal_data(
    already: frozenset[UUID], customer_key: str, complaint_ids: Iterable[UUID], by: str
) -> list[DomainEvent]:
    """Record the erasure of the complaints not erased yet (a repeated request: nothing)."""
    new = tuple(c for c in complaint_ids if c not in already)
    if not new:
        return []
    return [ev.PersonalDataErased(customer_key=customer_key, complaint_ids=new, erased_by=by)]


@dataclass(frozen=True)
class Received:
    """The decision on a submission: the events, plus what the answer shows."""

    events: list[DomainEvent]
    reference: str
    category: str
    severity: Severity
    language: str
    alerts: list[str]


def receive(
    complaint: ComplaintCreate,
    *,
    reference: str,
    received_at: datetime,
    history: History,
    detection: Detection | None,
    policy: Policy,
    rules: IntakeRules,
    templates: dict[str, Template],
    submitted_by: str | None = None,
) -> Received:
    """Record, acknowledge and (where needed) alert: ``ComplaintReceived``,
    ``ComplaintAcknowledged`` and ``ComplaintAlertRaised``."""
    ip = policy.intake
    if complaint.category is not None and complaint.category not in ip.categories:
        raise InputRejected(
            "body.category", f"unknown category {complaint.category!r}", allowed=list(ip.categories)
        )
    if len(complaint.attachments) > ip.max_attachments:
        raise InputRejected("body.attachments", f"at most {ip.max_attachments} attachments")
    reply = complaint.reply_channel()
    contact = CONTACT_FIELD.get(reply)
    if contact and not getattr(complaint.customer, contact):
        raise InputRejected(
            f"body.customer.{contact}", f"needed to reply on the {reply.value} channel"
        )

    language = complaint.customer.language
    language_detected = False
    if language is None:
        language_detected = True
        language = (
            detection.language
            if detection and detection.confidence >= MIN_CONFIDENCE
            else ip.default_language
        )
    template = templates.get(language) or templates[ip.default_language]

    text = complaint.text
    norm = words(text)  # once for every rule below
    negative = rules.negative_wording(text, norm)
    signals = rules.signals(text, norm)
    category, category_suggested = complaint.category, False
    if category is None:
        category, _ = rules.suggest_category(text, norm)
        category_suggested = True
    severity, severity_suggested = complaint.severity, False
    if severity is None:
        severity_suggested = True
        audience = complaint.public_post.audience_size if complaint.public_post else None
        if complaint.safety_incident or signals.safety:
            severity = Severity.critical
        elif (
            negative.score >= ip.negative_wording_threshold
            or (audience or 0) >= 1000
            or signals.public_exposure
        ):
            severity = Severity.high
        else:
            severity = Severity.medium

    due = policy.first_response_due(received_at, severity.value)
    received = ev.ComplaintReceived.model_validate(
        {
            **complaint.model_dump(mode="json"),
            "reference": reference,
            "received_at": received_at,
            "category": category,
            "category_suggested": category_suggested,
            "severity": severity,
            "severity_suggested": severity_suggested,
            "language": language,
            "language_detected": language_detected,
            "reply_channel": reply,
            "first_response_due": due,
            "possible_duplicate_of": history.duplicate_of,
            "submitted_by": submitted_by,
        }
    )
    message = render(
        template,
        customer_name=complaint.customer.name,
        reference=reference,
        subject=complaint.subject,
        due=due,
        timezone=policy.calendar.timezone,
        reply_channel=reply.value,
    )
    events: list[DomainEvent] = [
        received,
        ev.ComplaintAcknowledged(
            reference=reference,
            channel=reply,
            language=template.language,
            first_response_due=due,
            message=ev.Message(subject=message.subject, body=message.body),
        ),
    ]

    reasons: list[str] = []
    details = ev.AlertDetails()
    if severity is Severity.critical:
        reasons.append("critical_severity")
    if complaint.safety_incident:
        reasons.append("safety_incident")
    if complaint.public_post is not None:
        reasons.append("public_post")
        details = details.model_copy(update={"audience_size": complaint.public_post.audience_size})
    if history.recent_count + 1 >= ip.repeat_threshold:
        reasons.append("repeat_complainant")
        details = details.model_copy(update={"complaints_in_window": history.recent_count + 1})
    if negative.score >= ip.negative_wording_threshold:
        reasons.append("negative_wording")
        details = details.model_copy(update={"negative_wording_score": negative.score})
    if signals.public_exposure and complaint.public_post is None:
        reasons.append("public_exposure_suggested")
        details = details.model_copy(update={"public_exposure": signals.public_exposure})
    if signals.safety and not complaint.safety_incident:
        reasons.append("safety_suggested")
        details = details.model_copy(update={"safety": signals.safety})
    if reasons:
        events.append(
            ev.ComplaintAlertRaised(
                reference=reference,
                reasons=tuple(reasons),
                severity=severity,
                category=category,
                details=details,
            )
        )
    return Received(events, reference, category, severity, template.language, reasons)


def add_details(
    state: Complaint, details: DetailsCreate, added_by: str | None
) -> list[DomainEvent]:
    """Details from the customer (``added_by`` None: through a channel, which answers a pending
    clarification) or from an agent (their id)."""
    if state.status is not Status.received:
        raise CommandRejected(state.status.value, "add_details", allowed_commands(state.status))
    return [
        ev.ComplaintDetailsAdded.model_validate(
            {**details.model_dump(mode="json"), "added_by": added_by}
        )
    ]


def withdraw(state: Complaint, command: WithdrawCreate, by: str | None) -> list[DomainEvent]:
    if state.status is not Status.received:
        raise CommandRejected(state.status.value, "withdraw", allowed_commands(state.status))
    return [ev.ComplaintWithdrawn(reason=command.reason, withdrawn_by=by)]


def allowed_commands(status: Status) -> list[str]:
    return ["add_details", "withdraw"] if status is Status.received else []
