"""Complaints as customers voice them: the submission and the decision to record it."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from complaints_shared.envelope import NewEvent
from complaints_shared.errors import InputRejected
from complaints_shared.policy import Policy
from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class Customer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, min_length=1, max_length=100)
    name: str | None = Field(None, min_length=1, max_length=200)
    email: str | None = Field(None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    phone: str | None = Field(None, max_length=40, pattern=r"^\+?[0-9 ()./-]{5,40}$")
    language: str | None = Field(None, pattern=r"^[a-z]{2}$", description="ISO 639-1 code")
    preferred_channel: Channel | None = None

    @model_validator(mode="after")
    def _identified(self) -> Self:
        if not (self.id or self.name):
            raise ValueError("a customer needs an id or a name")
        return self


class ComplaintCreate(BaseModel):
    """A complaint as submitted through any channel."""

    model_config = ConfigDict(extra="forbid")

    channel: Channel
    customer: Customer
    subject: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=10_000)
    category: str | None = Field(None, max_length=60)
    severity: Severity = Severity.medium


def receive(complaint: ComplaintCreate, policy: Policy) -> list[NewEvent]:
    """Decide to record a complaint: one ``ComplaintReceived``."""
    category = complaint.category or "other"
    if category not in policy.intake.categories:
        raise InputRejected(
            "category", f"unknown category {category!r}", allowed=list(policy.intake.categories)
        )
    data = complaint.model_dump(mode="json", exclude_none=True)
    data["category"] = category
    return [NewEvent(type="ComplaintReceived", data=data)]
