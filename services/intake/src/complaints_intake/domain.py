"""Complaints as customers voice them, and the decisions intake takes on them (no I/O)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self
from uuid import UUID

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from complaints_intake.acknowledgement import Template, render
from complaints_intake.language import MIN_CONFIDENCE, Detection
from complaints_intake.rules import IntakeRules
from complaints_intake.text import normalise
from complaints_shared.envelope import NewEvent
from complaints_shared.errors import CommandRejected, InputRejected
from complaints_shared.policy import Policy

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Channel(StrEnum):
    in_person = "in_person"
    phone = "phone"
    email = "email"
    letter = "letter"
    web = "web"
    chat = "chat"
    social = "social"


class Severity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


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
    received = "received"
    withdrawn = "withdrawn"


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Customer(_Input):
    id: Annotated[Text, Field(max_length=100)] | None = None
    name: Annotated[Text, Field(max_length=200)] | None = None
    email: str | None = Field(None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    phone: str | None = Field(None, pattern=r"^\+?[0-9 ()./-]{5,40}$")
    postal_address: Annotated[Text, Field(max_length=500)] | None = None
    preferred_channel: Channel | None = None
    language: str | None = Field(None, pattern=r"^[a-z]{2}$", description="ISO 639-1 code")
    consent_to_other_channel: bool = Field(
        False, description="the customer agrees to be contacted on another channel than theirs"
    )

    @model_validator(mode="after")
    def _identified(self) -> Self:
        if not (self.id or self.name or self.email or self.phone):
            raise ValueError("a customer needs an id, a name, an e-mail address or a phone number")
        return self

    def key(self) -> str:
        """A stable pseudonymous key of the customer, for repeat and duplicate detection."""
        if self.id:
            basis = f"id:{self.id}"
        elif self.email:
            basis = f"email:{self.email.casefold()}"
        elif self.phone:
            basis = "phone:" + "".join(c for c in self.phone if c.isdigit())
        else:
            basis = f"name:{normalise(self.name or '')}"
        return hashlib.sha256(basis.encode()).hexdigest()


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
    subject: Annotated[Text, Field(max_length=200)]
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
    added_by: Annotated[Text, Field(max_length=100)] | None = Field(
        None, description="agent id, or absent when the customer added it"
    )

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not (self.note or self.answers or self.attachments):
            raise ValueError("give a note, answers or attachments")
        return self


class WithdrawCreate(_Input):
    reason: Annotated[Text, Field(max_length=1000)] | None = None


@dataclass(frozen=True)
class History:
    """What intake knows about the customer's earlier complaints (read before deciding)."""

    recent_count: int  # within the policy's repeat window, this one excluded
    duplicate_of: UUID | None


@dataclass(frozen=True)
class Received:
    """The decision on a submission: the events, plus what the answer shows."""

    events: list[NewEvent]
    reference: str
    category: str
    severity: Severity
    language: str
    alerts: list[str]


CONTACT_FOR_CHANNEL = {
    Channel.email: "email",
    Channel.phone: "phone",
    Channel.letter: "postal_address",
}


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
    contact = CONTACT_FOR_CHANNEL.get(reply)
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

    negative = rules.negative_wording(complaint.text)
    category, category_suggested = complaint.category, False
    if category is None:
        category, _ = rules.suggest_category(complaint.text)
        category_suggested = True
    severity, severity_suggested = complaint.severity, False
    if severity is None:
        severity_suggested = True
        audience = complaint.public_post.audience_size if complaint.public_post else None
        if complaint.safety_incident:
            severity = Severity.critical
        elif negative.score >= ip.negative_wording_threshold or (audience or 0) >= 1000:
            severity = Severity.high
        else:
            severity = Severity.medium

    due = policy.first_response_due(received_at, severity.value)
    data: dict[str, Any] = complaint.model_dump(mode="json", exclude_none=True)
    data.update(
        reference=reference,
        category=category,
        category_suggested=category_suggested,
        severity=severity.value,
        severity_suggested=severity_suggested,
        language=language,
        language_detected=language_detected,
        reply_channel=reply.value,
        first_response_due=due.isoformat(),
    )
    if history.duplicate_of is not None:
        data["possible_duplicate_of"] = str(history.duplicate_of)
    message = render(
        template,
        customer_name=complaint.customer.name,
        reference=reference,
        subject=complaint.subject,
        due=due,
        timezone=policy.calendar.timezone,
        reply_channel=reply.value,
    )
    events = [
        NewEvent(type="ComplaintReceived", data=data),
        NewEvent(
            type="ComplaintAcknowledged",
            data={
                "reference": reference,
                "channel": reply.value,
                "language": template.language,
                "first_response_due": due.isoformat(),
                "message": {"subject": message.subject, "body": message.body},
            },
        ),
    ]

    reasons: list[str] = []
    details: dict[str, Any] = {}
    if severity is Severity.critical:
        reasons.append("critical_severity")
    if complaint.safety_incident:
        reasons.append("safety_incident")
    if complaint.public_post is not None:
        reasons.append("public_post")
        details["audience_size"] = complaint.public_post.audience_size
    if history.recent_count + 1 >= ip.repeat_threshold:
        reasons.append("repeat_complainant")
        details["complaints_in_window"] = history.recent_count + 1
    if negative.score >= ip.negative_wording_threshold:
        reasons.append("negative_wording")
        details["negative_wording_score"] = negative.score
    if reasons:
        events.append(
            NewEvent(
                type="ComplaintAlertRaised",
                data={
                    "reference": reference,
                    "reasons": reasons,
                    "severity": severity.value,
                    "category": category,
                    "details": details,
                },
            )
        )
    return Received(events, reference, category, severity, template.language, reasons)


def add_details(status: Status, details: DetailsCreate) -> list[NewEvent]:
    if status is not Status.received:
        raise CommandRejected(status.value, "add details", allowed_commands(status))
    return [
        NewEvent(
            type="ComplaintDetailsAdded", data=details.model_dump(mode="json", exclude_none=True)
        )
    ]


def withdraw(status: Status, command: WithdrawCreate) -> list[NewEvent]:
    if status is not Status.received:
        raise CommandRejected(status.value, "withdraw", allowed_commands(status))
    return [
        NewEvent(type="ComplaintWithdrawn", data=command.model_dump(mode="json", exclude_none=True))
    ]


def allowed_commands(status: Status) -> list[str]:
    return ["add details", "withdraw"] if status is Status.received else []
