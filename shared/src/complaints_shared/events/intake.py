"""Events of the intake service, on ``complaints.intake.v2`` (stream = the complaint)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid5

from complaints_shared.events.base import REGISTRY, DomainEvent, Payload, Personal, PersonalOrNone
from complaints_shared.vocabulary import Channel, Severity

event = REGISTRY.register("intake")


class Customer(Payload):
    id: PersonalOrNone = None
    name: PersonalOrNone = None
    email: PersonalOrNone = None
    phone: PersonalOrNone = None
    postal_address: PersonalOrNone = None
    preferred_channel: Channel | None = None
    language: str | None = None
    consent_to_other_channel: bool = False


class PublicPost(Payload):
    url: Personal
    platform: str | None = None
    audience_size: int | None = None


class Attachment(Payload):
    ref: Personal
    name: PersonalOrNone = None
    media_type: str | None = None


class QuestionAnswer(Payload):
    question: str
    answer: Personal


class Message(Payload):
    """A message to the customer, ready to deliver."""

    subject: Personal
    body: Personal


@event
class ComplaintReceived(DomainEvent):
    """A complaint, as voiced on any channel, with what intake suggested."""

    reference: str
    received_at: datetime
    channel: Channel
    reply_channel: Channel
    customer: Customer
    subject: Personal
    description: Personal
    category: str
    category_suggested: bool = False
    severity: Severity
    severity_suggested: bool = False
    language: str
    language_detected: bool = False
    first_response_due: datetime
    product: str | None = None
    order_reference: str | None = None
    safety_incident: bool = False
    public_post: PublicPost | None = None
    desired_outcome: str | None = None
    attachments: tuple[Attachment, ...] = ()
    possible_duplicate_of: UUID | None = None
    submitted_by: str | None = None
    """who submitted it: a channel gateway's or an agent's token subject; null: anonymous"""

    @property
    def text(self) -> str:
        return f"{self.subject}\n{self.description}"


@event
class ComplaintAcknowledged(DomainEvent):
    """The acknowledgement: thanks, apology, reference, and when the first response is due."""

    reference: str
    channel: Channel
    language: str
    first_response_due: datetime
    message: Message


class AlertDetails(Payload):
    audience_size: int | None = None
    complaints_in_window: int | None = None
    negative_wording_score: int | None = None
    public_exposure: tuple[str, ...] = ()
    """with ``public_exposure_suggested``: what the text threatens (social_media, press,
    regulator, legal), a suggestion from the text, not a fact"""
    safety: tuple[str, ...] = ()
    """with ``safety_suggested``: what the text tells (injury, burn_fire, electrical,
    medical_care, food_health, child), a suggestion from the text, not a fact"""


@event
class ComplaintAlertRaised(DomainEvent):
    reference: str
    reasons: tuple[str, ...]
    severity: Severity
    category: str
    details: AlertDetails = AlertDetails()


@event
class ComplaintDetailsAdded(DomainEvent):
    """Information collected after the complaint was received (by an agent, or the customer
    when ``added_by`` is absent)."""

    note: PersonalOrNone = None
    answers: tuple[QuestionAnswer, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    added_by: str | None = None


@event
class ComplaintWithdrawn(DomainEvent):
    reason: PersonalOrNone = None
    withdrawn_by: str | None = None
    """the token subject of the channel gateway or agent that recorded it"""


@event
class PersonalDataErased(DomainEvent):
    """A customer's personal data was erased (right to erasure): their data key is destroyed,
    so every personal field of their events reads as erased; each service scrubs its own copies
    when it reads this.  The stream is the customer's (:func:`customer_stream`)."""

    customer_key: str
    """the customer's pseudonymous key"""
    complaint_ids: tuple[UUID, ...]
    """the complaints erased by this request"""
    erased_by: str
    """the privacy officer's or administrator's token subject"""


CUSTOMER_NAMESPACE = UUID("6d0f1c3e-6c7e-4f43-9a55-0c2f8f7a9b10")


def customer_stream(customer_key: str) -> UUID:
    """The stream of events about one customer as a data subject (erasures)."""
    return uuid5(CUSTOMER_NAMESPACE, customer_key)
