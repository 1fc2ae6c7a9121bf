"""The event models and the contract generated from them: up to date, complete, personal data
marked, and the compatibility gate judging breaking and compatible changes correctly."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from pydantic import ValidationError

from complaints_shared import contracts
from complaints_shared.events import REGISTRY, DomainEvent, personal_paths
from complaints_shared.events import intake as it
from complaints_shared.events import resolution as rs

ROOT = Path(__file__).resolve().parents[2]
DESIGN_EVENTS = {
    "intake": {
        "ComplaintReceived",
        "ComplaintAcknowledged",
        "ComplaintAlertRaised",
        "ComplaintDetailsAdded",
        "ComplaintWithdrawn",
    },
    "resolution": {
        "CaseOpened",
        "CaseAssigned",
        "ClarificationRequested",
        "ClarificationReceived",
        "CauseIdentified",
        "SolutionProposed",
        "SolutionAgreed",
        "SolutionRejected",
        "ActionPlanned",
        "ActionCompleted",
        "CompensationRequested",
        "CompensationApproved",
        "CompensationDeclined",
        "DeadlineBreached",
        "CaseEscalated",
        "CaseResolved",
        "CaseReopened",
        "CaseClosed",
    },
    "followup": {
        "SatisfactionCheckScheduled",
        "SatisfactionCheckSent",
        "SatisfactionRecorded",
        "SatisfactionCheckExpired",
        "ReopenRequested",
        "NextStepsConfirmed",
    },
    "learning": {
        "ProblemOpened",
        "RecurrenceDetected",
        "CorrectiveActionPlanned",
        "CorrectiveActionCompleted",
        "RecurrenceAfterFix",
        "ProblemResolved",
    },
}


def _tool() -> Any:
    spec = importlib.util.spec_from_file_location("contracts_tool", ROOT / "tools/contracts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_contract_and_access_matrix_are_what_the_code_generates():
    stale = contracts.stale_files(ROOT, _tool().documents)
    assert stale == [], "run ./dev contracts\n" + "\n".join(stale)


def test_the_committed_contract_is_compatible_with_the_baseline():
    baseline = contracts.load_contract(ROOT / contracts.BASELINE_PATH)
    assert baseline, "contracts/baseline is missing"
    assert contracts.breaking_changes(baseline, contracts.current_contract()) == []


@pytest.mark.parametrize("service", sorted(DESIGN_EVENTS))
def test_every_event_of_the_design_has_a_model_and_is_published(service: str):
    names = {m.event_name() for m in REGISTRY.of_service(service)}
    assert DESIGN_EVENTS[service] <= names
    doc = yaml.safe_load((ROOT / contracts.ASYNCAPI_PATH).read_text("utf-8"))
    channel = doc["channels"][service]
    assert re.fullmatch(rf"complaints\.{service}\.v\d+", channel["address"])
    assert set(channel["messages"]) == names
    for name in names:
        assert doc["components"]["schemas"][name]["type"] == "object"
        assert (ROOT / "contracts/schemas" / channel["address"] / f"{name}.json").is_file()


def test_personal_data_is_marked_in_the_models_and_the_schemas():
    assert {
        "customer.id",
        "customer.name",
        "customer.email",
        "customer.phone",
        "customer.postal_address",
        "subject",
        "description",
    } <= set(personal_paths(it.ComplaintReceived))
    assert {"message.subject", "message.body"} <= set(personal_paths(it.ComplaintAcknowledged))
    assert "customer_name" in personal_paths(rs.CaseOpened)
    assert "customer_message.body" in personal_paths(rs.CaseResolved)
    schema = json.loads(
        (ROOT / "contracts/schemas/complaints.intake.v2/ComplaintReceived.json").read_text()
    )
    assert schema["$defs"]["Customer"]["properties"]["email"]["x-personal-data"] is True
    assert "x-personal-data" not in schema["properties"]["category"]


def test_a_wrong_field_is_refused_when_built_but_tolerated_when_read():
    with pytest.raises(ValidationError, match="reasn\n  Extra inputs are not permitted"):
        rs.CaseClosed(complaint_id=UUID(int=1), reasn="typo")  # type: ignore[call-arg]
    read = REGISTRY.parse("CaseClosed", {"complaint_id": str(UUID(int=1)), "from_v2": True})
    assert read == rs.CaseClosed(complaint_id=UUID(int=1))
    with pytest.raises(ValidationError):
        REGISTRY.parse("CaseClosed", {"reason": "the complaint id is missing"})


def test_a_wrong_nested_field_is_refused_when_built_but_tolerated_when_read():
    with pytest.raises(ValidationError, match="nickname\n  Extra inputs are not permitted"):
        it.Customer(name="Ana", nickname="A")  # type: ignore[call-arg]
    received = it.ComplaintReceived(
        reference="CMP-2026-000001",
        received_at=datetime(2026, 1, 5, 9, tzinfo=UTC),
        channel="email",
        reply_channel="email",
        customer=it.Customer(name="Ana", email="ana@example.pt"),
        subject="Atraso",
        description="A encomenda chegou tarde.",
        category="delivery",
        severity="medium",
        language="pt",
        first_response_due=datetime(2026, 1, 5, 17, tzinfo=UTC),
    )
    newer = received.to_json() | {"from_v3": 1}
    newer["customer"] = newer["customer"] | {"nickname": "A"}
    assert REGISTRY.parse("ComplaintReceived", newer) == received
    # as it travels: JSON types only, nested models and enums included, as model_dump gives
    travels = received.to_json()
    assert travels == received.model_dump(mode="json")
    assert travels["received_at"] == "2026-01-05T09:00:00Z"
    assert travels["channel"] == "email" and travels["severity"] == "medium"
    assert travels["customer"]["email"] == "ana@example.pt"


def test_event_names_are_unique():
    with pytest.raises(ValueError, match="defined twice"):

        @REGISTRY.register("intake")
        class ComplaintReceived(DomainEvent):
            pass


# -- the compatibility gate ------------------------------------------------------------------


class Thing(DomainEvent):
    thing_id: UUID
    kind: str
    count: int = 0


def schema_of(model: type[DomainEvent]) -> dict[str, Any]:
    return contracts.event_schema("intake", model)


def contract(**events: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"complaints.things.v1": events}


BASE = contract(ThingHappened=schema_of(Thing))


def changed(fn: Any) -> dict[str, dict[str, Any]]:
    new = copy.deepcopy(BASE)
    fn(new["complaints.things.v1"]["ThingHappened"])
    return new


def what(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [b.what for b in contracts.breaking_changes(baseline, current)]


def test_identical_contracts_are_compatible():
    assert what(BASE, copy.deepcopy(BASE)) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["properties"].pop("count"), "field count was removed"),
        (
            lambda s: s["properties"].update(kind={"type": "integer"}),
            "field kind changed type",
        ),
        (
            lambda s: (
                s["properties"].update(at={"type": "string", "format": "date-time"}),
                s["required"].append("at"),
            ),
            "new required field at",
        ),
        (lambda s: s["required"].append("count"), "field count became required"),
    ],
)
def test_breaking_changes_fail(change: Any, expected: str):
    assert what(BASE, changed(change)) == [expected]


def test_a_removed_event_or_topic_fails_without_a_new_major_version():
    assert what(BASE, contract()) == ["the event was removed"]
    assert what(BASE, {}) == ["the topic was removed without a new major version"]


def test_a_new_major_version_may_change_anything():
    bumped = {"complaints.things.v2": {"Other": schema_of(Thing)}}
    assert what(BASE, bumped) == []


def test_compatible_changes_pass():
    class Thing2(DomainEvent):
        thing_id: UUID
        kind: str
        count: int = 0
        note: str | None = None  # a new optional field
        seen_at: datetime | None = None

    grown = contract(ThingHappened=schema_of(Thing2), ThingVanished=schema_of(Thing))
    assert what(BASE, grown) == []


def test_enum_values_may_be_added_not_removed():
    def with_enum(values: list[str]) -> dict[str, dict[str, Any]]:
        return changed(lambda s: s["properties"].update(kind={"type": "string", "enum": values}))

    assert what(with_enum(["a", "b"]), with_enum(["a", "b", "c"])) == []
    (lost,) = what(with_enum(["a", "b"]), with_enum(["a"]))
    assert lost.startswith("field kind lost enum values") and '"b"' in lost


def test_a_nested_object_follows_the_same_rules():
    old = schema_of(it.ComplaintReceived)
    new = copy.deepcopy(old)
    new["$defs"]["Customer"]["properties"].pop("phone")
    new["$defs"]["Customer"]["properties"]["nickname"] = {"type": "string"}
    assert what(contract(E=old), contract(E=new)) == ["field customer.phone was removed"]
