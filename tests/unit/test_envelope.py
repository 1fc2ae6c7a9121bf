"""The CloudEvents binary-mode mapping of events onto Kafka records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from complaints_shared.envelope import (
    Event,
    MalformedEvent,
    NewEvent,
    decode_headers,
    from_kafka_record,
    to_kafka_record,
)


def sample(**kw) -> Event:
    base = dict(
        event_id=uuid.uuid4(),
        type="ComplaintReceived",
        stream_id=uuid.uuid4(),
        version=3,
        occurred_at=datetime(2026, 5, 1, 9, 30, tzinfo=UTC),
        source="/complaints/intake",
        data={"subject": "Fila de espera", "n": 2},
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
        "ce_type": "complaints.intake.ComplaintReceived",
        "ce_source": "/complaints/intake",
        "ce_subject": str(e.stream_id),
        "ce_time": "2026-05-01T09:30:00+00:00",
        "ce_sequence": "3",
        "content-type": "application/json",
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    }
    assert r.value.decode() == '{"subject":"Fila de espera","n":2}'


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


def test_new_event_types_are_pascal_case_names():
    with pytest.raises(ValueError):
        NewEvent(type="complaint received", data={})
    assert NewEvent(type="CaseOpened", data={}).type == "CaseOpened"


def test_occurred_at_must_be_timezone_aware():
    with pytest.raises(ValueError):
        sample(occurred_at=datetime(2026, 5, 1, 9, 30))
