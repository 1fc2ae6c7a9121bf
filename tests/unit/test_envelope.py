"""The CloudEvents binary-mode mapping of events onto Kafka records."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from complaints_shared.envelope import (
    Event,
    MalformedEvent,
    decode_headers,
    from_kafka_record,
    to_kafka_record,
)
from complaints_shared.events import UnknownEvent
from complaints_shared.events.intake import ComplaintWithdrawn


def sample(**kw) -> Event:
    base = dict(
        event_id=uuid.uuid4(),
        stream_id=uuid.uuid4(),
        version=3,
        occurred_at=datetime(2026, 5, 1, 9, 30, tzinfo=UTC),
        source="/complaints/intake",
        payload=ComplaintWithdrawn(reason="Fila de espera"),
    )
    base.update(kw)
    return Event(**base)


def test_record_carries_cloudevents_headers_and_the_stream_as_key():
    e = sample()
    r = to_kafka_record(e, {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    h = decode_headers(r.headers)
    assert r.key == str(e.stream_id).encode()
    assert h == {
        "ce_specversion": "1.0",
        "ce_id": str(e.event_id),
        "ce_type": "complaints.intake.ComplaintWithdrawn",
        "ce_source": "/complaints/intake",
        "ce_subject": str(e.stream_id),
        "ce_time": "2026-05-01T09:30:00+00:00",
        "ce_sequence": "3",
        "content-type": "application/json",
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    }
    assert r.value.decode() == '{"reason":"Fila de espera","withdrawn_by":null}'


def test_round_trip_keeps_every_attribute_also_other_offsets():
    e = sample(occurred_at=datetime(2026, 5, 1, 11, 30, tzinfo=timezone(timedelta(hours=2))))
    r = to_kafka_record(e)
    assert from_kafka_record(r.value, r.headers) == e


@pytest.mark.parametrize(
    ("value", "drop", "change", "reason"),
    [
        (b"{oops", None, None, "not JSON"),
        (b"[1, 2]", None, None, "not a JSON object"),
        (None, "ce_id", None, "missing CloudEvents headers: ce_id"),
        (None, "ce_subject", None, "missing CloudEvents headers: ce_subject"),
        (None, None, ("ce_specversion", b"0.3"), "unsupported ce_specversion"),
        (None, None, ("ce_subject", b"not-a-uuid"), "invalid CloudEvents attributes"),
        (None, None, ("ce_time", b"yesterday"), "invalid CloudEvents attributes"),
        (None, None, ("ce_time", b"2026-05-01T09:30:00"), "invalid CloudEvents attributes"),
        (None, None, ("ce_id", b"\xff\xfe"), "not UTF-8"),
    ],
)
def test_unreadable_records_are_malformed(value, drop, change, reason):
    r = to_kafka_record(sample())
    headers = [(k, v) for k, v in r.headers if k != drop]
    if change:
        headers = [(k, change[1] if k == change[0] else v) for k, v in headers]
    with pytest.raises(MalformedEvent, match=reason):
        from_kafka_record(value if value is not None else r.value, headers)


@pytest.mark.parametrize(
    "spelling",
    [str, lambda u: str(u).upper(), lambda u: u.hex, lambda u: f"{{{u}}}", lambda u: u.urn],
)
def test_ids_are_read_in_every_spelling_of_a_uuid(spelling):
    e = sample()
    r = to_kafka_record(e)
    headers = [(k, spelling(e.event_id).encode() if k == "ce_id" else v) for k, v in r.headers]
    read = from_kafka_record(r.value, headers)
    assert read.event_id == e.event_id and isinstance(read.event_id, uuid.UUID)
    assert hash(read.stream_id) == hash(e.stream_id)


def test_every_missing_header_is_named_in_order():
    r = to_kafka_record(sample())
    headers = [(k, v) for k, v in r.headers if k not in ("ce_time", "ce_id")]
    with pytest.raises(MalformedEvent, match=r"missing CloudEvents headers: ce_id, ce_time$"):
        from_kafka_record(r.value, headers)


def test_a_known_type_whose_data_breaks_its_schema_is_malformed_without_echoing_it():
    r = to_kafka_record(sample())
    with pytest.raises(MalformedEvent, match="ComplaintWithdrawn does not match") as caught:
        from_kafka_record(b'{"reason": ["secret text"]}', r.headers)
    assert "secret text" not in str(caught.value)


def test_an_unknown_type_is_read_as_unknown_not_rejected():
    r = to_kafka_record(sample())
    headers = [
        (k, b"complaints.intake.ComplaintTranslated" if k == "ce_type" else v) for k, v in r.headers
    ]
    event = from_kafka_record(b'{"language": "pt"}', headers)
    assert isinstance(event.payload, UnknownEvent)
    assert event.type == "ComplaintTranslated"


def test_occurred_at_must_be_timezone_aware():
    with pytest.raises(ValueError):
        sample(occurred_at=datetime(2026, 5, 1, 9, 30))


def test_headers_read_as_text_a_header_without_value_as_empty_the_last_of_a_name_winning():
    headers = [("ce_id", b"first"), ("traceparent", None), ("ce_id", b"second")]
    assert decode_headers(headers) == {"ce_id": "second", "traceparent": ""}
    assert decode_headers(None) == {}


def test_an_event_is_a_frozen_value_built_by_position_or_by_name():
    event = sample()
    by_position = Event(
        event.event_id,
        event.stream_id,
        event.version,
        event.occurred_at,
        event.source,
        event.payload,
    )
    assert by_position == event and hash(by_position) == hash(event)
    assert dataclasses.astuple(by_position) == dataclasses.astuple(event)
    assert dataclasses.replace(event, version=4).version == 4
    assert dataclasses.replace(event, version=4).event_id == event.event_id
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.version = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match="versions start at 1"):
        sample(version=0)
    with pytest.raises(ValueError, match="versions start at 1"):
        dataclasses.replace(event, version=0)
