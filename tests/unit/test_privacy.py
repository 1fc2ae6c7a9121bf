"""Personal data without I/O: sealing, the personal fields of the models, redacted telemetry
and structured logs."""

from __future__ import annotations

import logging
import sys
import uuid
from collections import OrderedDict

import orjson
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from complaints_shared.events.intake import ComplaintReceived
from complaints_shared.latest import keep_latest
from complaints_shared.logs import JsonFormatter
from complaints_shared.privacy import (
    ERASED,
    DataKey,
    InMemoryKeyring,
    PersonalField,
    erase_fields,
    load_master_key,
    new_master_key,
    open_payloads,
    open_sealed,
    personal_fields,
    seal,
)
from complaints_shared.telemetry import redacted_target, safe_message
from tests.events import Confided
from tests.support import unsealed_text

KEY = DataKey("k1", bytes(range(32)))


def test_personal_fields_of_a_model_say_where_they_are_and_whether_they_may_be_null():
    fields = {f.dotted: f.nullable for f in personal_fields(ComplaintReceived)}
    assert fields["subject"] is False and fields["description"] is False
    assert fields["customer.email"] is True and fields["customer.name"] is True
    assert fields["public_post.url"] is False and fields["attachments.name"] is True
    assert "customer.language" not in fields and "reference" not in fields


def test_a_sealed_value_opens_only_with_its_key_in_its_own_field():
    fields = personal_fields(Confided)
    data = {"n": 1, "secret": "Eva", "note": "call her", "items": [{"label": "x", "name": "Eva"}]}
    seal(data, fields, KEY)
    readable = unsealed_text(orjson.dumps(data).decode())
    assert "Eva" not in readable and "call her" not in readable and data["n"] == 1
    assert readable.count("<sealed>") == 3 and '"label":"x"' in readable
    assert data["secret"] != data["items"][0]["name"]  # a fresh nonce per value

    def copy() -> dict:
        return dict(orjson.loads(orjson.dumps(data)))

    moved = {**copy(), "secret": data["note"]}  # a value copied into another field
    open_sealed(moved, fields, {KEY.key_id: KEY.secret})
    assert moved["secret"] == ERASED and moved["note"] == "call her"

    other = copy()
    open_sealed(other, fields, {KEY.key_id: bytes(32)})  # a wrong key
    assert (other["secret"], other["note"]) == (ERASED, None)

    gone = copy()
    open_sealed(gone, fields, {})  # the key was destroyed
    assert (gone["secret"], gone["note"], gone["items"][0]["name"]) == (ERASED, None, None)


@pytest.mark.parametrize(
    "damage",
    [
        lambda v: v[:-3],  # cut short
        lambda v: v[:-8] + "!" + v[-7:],  # a character outside base64url
        lambda v: v[:-8] + ("A" if v[-8] != "A" else "B") + v[-7:],  # a bit flipped
        lambda v: v + "é",
    ],
)
def test_a_damaged_sealed_value_reads_as_erased(damage):
    fields = personal_fields(Confided)
    data = {"n": 1, "secret": "Eva", "note": "call her", "items": []}
    seal(data, fields, KEY)
    data["secret"] = damage(data["secret"])
    open_sealed(data, fields, {KEY.key_id: KEY.secret})
    assert (data["secret"], data["note"]) == (ERASED, "call her")


def test_values_that_were_never_sealed_pass_through_and_scrubbing_erases_them():
    fields = personal_fields(Confided)
    foreign = {"n": 1, "secret": "plain", "note": None}
    open_sealed(foreign, fields, {})
    assert foreign["secret"] == "plain"
    assert erase_fields(foreign, fields) == {"n": 1, "secret": ERASED, "note": None}


def test_scrubbing_erases_every_personal_string_at_any_depth_and_leaves_the_rest():
    fields = (
        PersonalField(("a",), False),
        PersonalField(("c", "x"), True),
        PersonalField(("c", "y"), False),
        PersonalField(("l", "z"), True),
    )
    data = {
        "a": "Eva",
        "b": "kept",
        "c": {"x": "Eva", "y": None, "w": "kept"},
        "l": [{"z": "Eva", "k": "kept"}, [{"z": "Eva"}], "kept", {"q": 1}, None],
        "n": 5,
    }
    assert erase_fields(data, fields) == {
        "a": ERASED,
        "b": "kept",
        "c": {"x": None, "y": None, "w": "kept"},
        "l": [{"z": None, "k": "kept"}, [{"z": None}], "kept", {"q": 1}, None],
        "n": 5,
    }
    odd = {"a": 1, "c": "not a dict", "l": {"z": "Eva"}}  # a foreign producer's shapes
    assert erase_fields(odd, fields) == {"a": 1, "c": "not a dict", "l": {"z": None}}


def test_master_keys_are_32_bytes_of_base64():
    assert len(load_master_key(new_master_key())) == 32
    with pytest.raises(ValueError, match="32 bytes"):
        load_master_key("c2hvcnQ=")


def test_http_spans_see_route_templates_and_query_names_only():
    app = FastAPI()

    @app.get("/surveys/{token}")
    async def survey(token: str) -> None: ...

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/surveys/secret-token",
        "query_string": b"customer=eva%40example.hu&limit=5",
        "root_path": "",
    }
    assert redacted_target(app.routes, scope) == (
        "/surveys/{token}",
        "customer=REDACTED&limit=REDACTED",
    )
    assert redacted_target(app.routes, {**scope, "path": "/nowhere/eva"})[0] == "(unmatched)"


def test_log_lines_are_json_with_the_trace_and_no_foreign_error_text():
    tracer = TracerProvider().get_tracer("test")
    formatter = JsonFormatter("intake")
    with tracer.start_as_current_span("work") as span:
        error = ValueError("Key (email)=(eva@example.hu) already exists")  # a driver's words
        try:
            raise error
        except ValueError:
            record = logging.LogRecord(
                "complaints", logging.ERROR, __file__, 1, "round %s failed", ("7",), sys.exc_info()
            )
        line = orjson.loads(formatter.format(record))
    ctx = span.get_span_context()
    assert line["message"] == "round 7 failed" and line["service"] == "intake"
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")
    assert line["error.type"] == "ValueError" and "eva@" not in str(line)
    assert "message withheld" in safe_message(ValueError("eva@example.hu"))
    outside = orjson.loads(formatter.format(logging.LogRecord("x", 20, "", 1, "hi", (), None)))
    assert "trace_id" not in outside


def test_personal_fields_must_be_strings():
    from pydantic import BaseModel

    from complaints_shared.events.base import personal

    class Bad(BaseModel):
        age: int = personal(default=0)

    with pytest.raises(TypeError, match="must be strings"):
        personal_fields(Bad)
    assert PersonalField(("a", "b"), True).dotted == "a.b"


def test_customer_keys_need_the_keyring_secret():
    import hashlib

    from complaints_intake.domain import Customer, customer_key, customer_keys_matching

    eva = Customer(email="Eva@Example.hu")
    first, second = b"a" * 32, b"b" * 32
    key = customer_key(eva, first)
    assert key == customer_key(Customer(email="eva@example.hu"), first)  # stable, case-blind
    assert key != customer_key(eva, second)  # another secret, another key
    assert key not in (
        hashlib.sha256(b"email:eva@example.hu").hexdigest(),
        hashlib.sha256(b"eva@example.hu").hexdigest(),
    )  # an address alone does not give it away
    assert key in customer_keys_matching("EVA@example.hu", first)
    assert len(key) == 64 and int(key, 16) >= 0


async def test_a_reader_opens_only_the_personal_fields_it_reads_and_the_rest_stay_unread():
    """``open_payloads(..., reads=...)``: the fields named are opened; every other personal
    value reads as erased (null where it may be), and no key is fetched for them alone."""
    keyring = InMemoryKeyring()
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    key, other = await keyring.register(mine, "eva"), await keyring.register(theirs, "ana")
    fields = personal_fields(Confided)
    data = {"n": 1, "secret": "Eva", "note": "call her", "items": [{"label": "x", "name": "Eva"}]}
    seal(data, fields, key)
    unread = {"n": 2, "secret": "Ana", "note": "never read", "items": []}
    seal(unread, fields, other)
    asked: list[set[str]] = []
    keys = keyring.keys

    async def counting(key_ids):  # type: ignore[no-untyped-def]
        asked.append(set(key_ids))
        return await keys(key_ids)

    keyring.keys = counting  # type: ignore[method-assign]
    items = [("Confided", data), ("Other", {"n": 3}), ("Confided", unread)]
    await open_payloads(keyring, items, {"Confided": {"note"}})
    assert data == {
        "n": 1,
        "secret": ERASED,
        "note": "call her",
        "items": [{"label": "x", "name": None}],
    }
    assert unread["note"] == "never read" and unread["secret"] == ERASED
    assert asked == [{key.key_id, other.key_id}]  # the two notes' keys, once
    nothing = {"n": 4, "secret": "Bo", "note": None, "items": []}
    seal(nothing, fields, key)
    asked.clear()
    await open_payloads(keyring, [("Confided", nothing)], {"Confided": {"note"}})
    assert nothing["secret"] == ERASED and asked == []  # nothing to open: no key fetched


def test_a_process_keeps_the_latest_keys_up_to_its_limit_the_oldest_going_first():
    kept: OrderedDict[int, str] = OrderedDict()
    for i in range(1, 8):
        keep_latest(kept, i, f"key {i}", 4)
    assert list(kept) == [4, 5, 6, 7]
    keep_latest(kept, 5, "key 5 again", 4)  # looked up again: the latest now
    keep_latest(kept, 8, "key 8", 4)
    assert list(kept.items()) == [(6, "key 6"), (7, "key 7"), (5, "key 5 again"), (8, "key 8")]
