"""Where a delivery goes, decided from the contact details read with it (no I/O)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from complaints_followup.notify import NotYetKnown
from complaints_followup.projection import address

COMPLAINT = uuid.uuid4()


def delivery(on: str, **contact: Any) -> dict[str, Any]:
    """A claimed delivery on channel ``on`` as the claim returns it: the row and its
    ``contact_*`` columns."""
    row = {
        "complaint_id": COMPLAINT,
        "channel": on,
        "contact_known": True,
        "contact_channel": "email",
        "contact_erased": False,
        "contact_reference": "CMP-2026-000042",
        "contact_email": "ana@example.pt",
        "contact_phone": None,
        "contact_postal_address": None,
        "contact_consent": False,
    }
    row.update({f"contact_{k}": v for k, v in contact.items()})
    return row


def test_a_delivery_goes_to_the_field_of_its_channel():
    assert address(delivery("email")) == ("email", "ana@example.pt")
    assert address(delivery("phone", phone="+351 912 345 678")) == ("phone", "+351 912 345 678")
    assert address(delivery("letter", postal_address="Rua A 1, Lisboa")) == (
        "letter",
        "Rua A 1, Lisboa",
    )


def test_other_channels_reach_the_customer_by_the_complaints_reference():
    assert address(delivery("chat")) == ("chat", "CMP-2026-000042")
    assert address(delivery("chat", reference=None)) == ("chat", str(COMPLAINT))


def test_without_the_channels_field_e_mail_is_used_only_with_consent():
    assert address(delivery("phone")) is None
    assert address(delivery("phone", consent=True)) == ("email", "ana@example.pt")
    assert address(delivery("phone", consent=True, email=None)) is None


def test_contact_details_not_arrived_yet_are_told_apart_from_erased_ones():
    with pytest.raises(NotYetKnown):
        address(delivery("email", known=False))  # no contact row yet
    with pytest.raises(NotYetKnown):
        address(delivery("email", channel=None))  # a row without ComplaintReceived's details
    erased = delivery("email", channel=None, erased=True, email=None, reference=None)
    assert address(erased) is None  # erased: nowhere to send, not "wait"
