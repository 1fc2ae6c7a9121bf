"""Inputs that used to answer 500 (found by schemathesis and by hand): every one is a clear
422 problem+json now, and changes nothing."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest

from tests.integration.conftest import StartPlatform

pytestmark = pytest.mark.integration


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


async def test_malformed_ids_durations_cursors_and_naive_times_are_422(
    start_platform: StartPlatform, http: httpx.AsyncClient
):
    p = await start_platform("intake", "resolution", "learning", "followup")
    case = f"{p.url('resolution')}/cases/{uuid.uuid4()}"
    calls = [
        ("POST", f"{case}/compensation-requests/%0B/decline", {"reason": "x"}),
        ("POST", f"{case}/compensation-requests/%20/approve", {}),
        ("POST", f"{case}/actions/%20/complete", {}),
        ("POST", f"{case}/actions/{'a' * 101}/complete", {}),
        ("GET", f"{p.url('resolution')}/cases?breach_within=P999999999D", None),
        ("GET", f"{p.url('resolution')}/cases?breach_within=-PT1H", None),
        ("GET", f"{p.url('resolution')}/cases?cursor=2011-W01-2", None),
        ("GET", f"{p.url('resolution')}/cases?cursor={b64(f'2011-W01-2|{uuid.uuid4()}')}", None),
        (
            "GET",
            f"{p.url('resolution')}/cases?cursor={b64(f'2026-01-01T10:00|{uuid.uuid4()}')}",
            None,
        ),
        ("GET", f"{p.url('intake')}/complaints?cursor=s99999999999999999999", None),
        ("GET", f"{p.url('intake')}/complaints?cursor={b64('s99999999999999999999')}", None),
        ("GET", f"{p.url('intake')}/complaints?received_from=2026-11-23T10:00:00", None),
        ("GET", f"{p.url('learning')}/insights/categories?from=2026-11-23T10:00:00", None),
        ("GET", f"{p.url('followup')}/satisfaction?to=2026-11-23T10:00:00", None),
    ]
    complaint = {
        "channel": "email",
        "subject": "Broken kettle",
        "description": "It stopped working.",
        "customer": {"name": "Eva", "email": "eva@example.hu"},
    }
    unknown_language = {**complaint, "customer": {**complaint["customer"], "language": "xx"}}
    two_line_name = {**complaint, "customer": {**complaint["customer"], "name": "Eva\nBcc: x"}}
    calls += [
        ("POST", f"{p.url('intake')}/complaints", unknown_language),
        ("POST", f"{p.url('intake')}/complaints", two_line_name),
        ("POST", f"{p.url('intake')}/complaints", {**complaint, "subject": "a\r\nb"}),
        (
            "POST",
            f"{case}/assign",
            {"owner": {"id": "a1", "name": "Rita\nLopes", "contact": "+351 210 000 007"}},
        ),
    ]
    answers = []
    for method, url, body in calls:
        r = await http.request(method, url, json=body)
        answers.append((method, url.rsplit("/", 2)[-2:], r.status_code, r.headers["content-type"]))
    assert [a for a in answers if a[2:] != (422, "application/problem+json")] == []
    listed = (await http.get(f"{p.url('intake')}/complaints")).json()["items"]
    assert listed == []  # nothing was recorded
    # the same filters with a time zone, and a real cursor, are fine
    for url in (
        f"{p.url('intake')}/complaints?received_from=2026-11-23T10:00:00Z",
        f"{p.url('learning')}/insights/categories?from=2026-11-23T10:00:00%2B01:00",
        f"{p.url('resolution')}/cases?breach_within=P30D",
    ):
        assert (await http.get(url)).status_code == 200, url
