"""The published event contract, generated from the event models, and its compatibility gate.

``python -m complaints_shared.contracts generate`` (``./dev contracts``) writes one JSON Schema
per event (``contracts/schemas/<topic>/<Event>.json``) and the AsyncAPI 3.0 document
(``docs/asyncapi.yaml``).  ``check`` fails when the committed files differ from what the
models generate, or when the contract breaks the baseline (``contracts/baseline/``: the last
release) without a major version bump of the topic.  ``release`` makes the current contract the
baseline.

What breaks a topic's contract (needs ``….v2``): a removed event, a removed field, a field whose
type changed, a new required field, an enum value removed.  What does not: a new event, a new
optional field, a new enum value (consumers ignore what they do not know).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from complaints_shared.auth import EFFECTIVE_ROLES, ROLES
from complaints_shared.envelope import TYPE_PREFIX
from complaints_shared.events import REGISTRY, DomainEvent
from complaints_shared.topics import Topics

SERVICES = ("intake", "resolution", "followup", "learning")
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_PATH = Path("docs/asyncapi.yaml")
SCHEMAS_PATH = Path("contracts/schemas")
BASELINE_PATH = Path("contracts/baseline")

CLOUDEVENTS_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents 1.0 binary mode, plus W3C trace context.",
    "required": [
        "ce_specversion",
        "ce_id",
        "ce_type",
        "ce_source",
        "ce_subject",
        "ce_time",
        "ce_sequence",
        "content-type",
    ],
    "properties": {
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_id": {
            "type": "string",
            "format": "uuid",
            "description": "the event's id: de-duplicate by it (delivery is at least once)",
        },
        "ce_type": {"type": "string", "description": "complaints.<service>.<EventName>"},
        "ce_source": {"type": "string", "description": "/complaints/<service>"},
        "ce_subject": {
            "type": "string",
            "format": "uuid",
            "description": "the stream: the complaint id (the problem id on the learning topic)",
        },
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_sequence": {
            "type": "string",
            "description": "the event's version in its stream (1, 2, …): gap-free per subject",
        },
        "content-type": {"type": "string", "const": "application/json"},
        "traceparent": {"type": "string", "description": "W3C trace context"},
    },
}


def topic_of(service: str) -> str:
    address: str = getattr(Topics(), service)
    return address


def events_of(service: str) -> list[type[DomainEvent]]:
    return REGISTRY.of_service(service)


def _describe(model: type[DomainEvent]) -> str:
    doc = (model.__doc__ or "").strip()
    return " ".join(doc.split()) if doc and not doc.startswith("!!!") else ""


def event_schema(service: str, model: type[DomainEvent]) -> dict[str, Any]:
    """The JSON Schema of one event's data (a Kafka record's value), self-contained."""
    schema = model.model_json_schema(mode="serialization")
    name = model.event_name()
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": f"urn:complaints:schema:{topic_of(service)}:{name}",
        "x-ce-type": f"{TYPE_PREFIX}.{service}.{name}",
        "x-topic": topic_of(service),
        **schema,
    }


def schema_files() -> dict[Path, str]:
    """Every per-event schema file, by its path relative to the repository."""
    out: dict[Path, str] = {}
    for service in SERVICES:
        for model in events_of(service):
            path = SCHEMAS_PATH / topic_of(service) / f"{model.event_name()}.json"
            text = json.dumps(event_schema(service, model), indent=2, ensure_ascii=False)
            out[path] = text + "\n"
    return out


def asyncapi() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "serialization") for s in SERVICES for m in events_of(s)
    ]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = {"CloudEventsHeaders": CLOUDEVENTS_HEADERS, **defs.get("$defs", {})}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for service in SERVICES:
        names = [m.event_name() for m in events_of(service)]
        channels[service] = {
            "address": topic_of(service),
            "description": f"Events of the {service} service. Record key = ce_subject.",
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
        }
        operations[f"publish{service.capitalize()}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{service}"},
            "messages": [{"$ref": f"#/channels/{service}/messages/{n}"} for n in names],
        }
        for model in events_of(service):
            n = model.event_name()
            message: dict[str, Any] = {
                "name": n,
                "title": re.sub(r"(?<!^)([A-Z])", r" \1", n),
                "contentType": "application/json",
                "headers": {"$ref": "#/components/schemas/CloudEventsHeaders"},
                "payload": {"$ref": f"#/components/schemas/{n}"},
                "x-ce-type": f"{TYPE_PREFIX}.{service}.{n}",
            }
            if summary := _describe(model):
                message["summary"] = summary
            messages[n] = message
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Complaint lifecycle events",
            "version": "1.0.0",
            "description": (
                "Generated from the event models by `./dev contracts`; do not edit by hand.\n\n"
                "Every message: Kafka key = the stream id (the complaint; the problem on the"
                " learning topic), value = the event's data as JSON, headers = CloudEvents 1.0"
                " binary mode + W3C trace context. Delivery is at least once: de-duplicate by"
                " `ce_id`. Per stream, events of one topic arrive in order (`ce_sequence`).\n\n"
                "Fields marked `x-personal-data: true` hold personal data of the customer.\n\n"
                "Versioning: a topic's major version (`.v1`) changes only for a breaking change"
                " (a removed event or field, a retyped field, a new required field); new events,"
                " new optional fields and new enum values come without notice, so consumers"
                " ignore what they do not know."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def asyncapi_text() -> str:
    header = "# Generated by `./dev contracts` from the event models: do not edit by hand.\n"
    body: str = yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=100)
    return header + body


Extra = Callable[[], Mapping[Path, str]]


def generated(extra: Extra | None = None) -> dict[Path, str]:
    """Every generated file: the event contract, plus ``extra`` (documents generated from the
    services, which this library does not import)."""
    return {ASYNCAPI_PATH: asyncapi_text(), **schema_files(), **(extra() if extra else {})}


ACCESS_PATH = Path("docs/access.md")
ROLE_COLUMNS = ROLES


def access_matrix(openapis: Mapping[str, Mapping[str, Any]]) -> str:
    """The endpoint-by-role matrix of ``{service: openapi}``, from each operation's ``x-roles``
    (or ``x-public``): the same declarations the API enforces and the access test checks."""
    lines = [
        "# Who may call what",
        "",
        "Generated by `./dev contracts` from the routes' declarations (OpenAPI `x-roles`);"
        " `tests/integration/test_access.py` calls every route as every role and checks the"
        " same declarations. ✔ = allowed, · = 403. No token, an expired token, a token for"
        " another audience or one signed by another key: 401 everywhere but the public routes.",
        "",
        "`/docs` and `/openapi.json` are public on every service.",
        "",
        "A supervisor is an agent too, and a manager a supervisor (composite roles). What a"
        " supervisor or manager may approve depends on the amount (`[compensation]` limits of"
        " the policy); nobody approves their own request.",
        "",
    ]
    for service, api in openapis.items():
        lines += [
            f"## {service}",
            "",
            "| endpoint | " + " | ".join(ROLE_COLUMNS) + " |",
            "|---|" + "---|" * len(ROLE_COLUMNS),
        ]
        for path, item in api.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict):
                    continue
                name = f"`{method.upper()} {path}`"
                if "x-public" in op:
                    lines.append(
                        f"| {name} | public: {op['x-public']} |" + " |" * (len(ROLE_COLUMNS) - 1)
                    )
                    continue
                allowed = set(op.get("x-roles", ()))
                cells = [
                    "✔" if EFFECTIVE_ROLES.get(r, {r}) & allowed else "·" for r in ROLE_COLUMNS
                ]
                if "x-anonymous-when" in op:
                    name += f" (also without a token when {op['x-anonymous-when']})"
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# -- compatibility ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Break:
    topic: str
    event: str
    what: str

    def __str__(self) -> str:
        return f"{self.topic} {self.event}: {self.what}"


_NOISE = {"title", "description", "default", "examples", "x-personal-data"}


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    while isinstance(schema, dict) and "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = root.get("$defs", {}).get(name, {})
    return schema


def _shape(schema: Any, root: Mapping[str, Any]) -> Any:
    """The schema with references resolved and documentation left out, for comparison."""
    schema = _resolve(schema, root)
    if isinstance(schema, dict):
        return {k: _shape(v, root) for k, v in sorted(schema.items()) if k not in _NOISE}
    if isinstance(schema, list):
        return [_shape(v, root) for v in schema]
    return schema


def _enum_values(shape: Any) -> set[str] | None:
    if isinstance(shape, dict) and "enum" in shape:
        return {json.dumps(v) for v in shape["enum"]}
    return None


def _compare(
    old: Any, new: Any, old_root: Mapping[str, Any], new_root: Mapping[str, Any], path: str
) -> Iterator[str]:
    old_s, new_s = _resolve(old, old_root), _resolve(new, new_root)
    if isinstance(old_s, dict) and "properties" in old_s:
        if not (isinstance(new_s, dict) and "properties" in new_s):
            yield f"{path or 'the data'} is no longer an object"
            return
        old_req, new_req = set(old_s.get("required", ())), set(new_s.get("required", ()))
        for name, prop in old_s["properties"].items():
            where = f"{path}.{name}" if path else name
            if name not in new_s["properties"]:
                yield f"field {where} was removed"
                continue
            yield from _compare(prop, new_s["properties"][name], old_root, new_root, where)
            if name in new_req and name not in old_req:
                yield f"field {where} became required"
        for name in new_s["properties"]:
            if name not in old_s["properties"] and name in new_req:
                yield f"new required field {f'{path}.{name}' if path else name}"
        return
    old_shape, new_shape = _shape(old_s, old_root), _shape(new_s, new_root)
    if old_shape == new_shape:
        return
    old_enum, new_enum = _enum_values(old_shape), _enum_values(new_shape)
    if old_enum is not None and new_enum is not None:
        rest_old = {k: v for k, v in old_shape.items() if k != "enum"}
        rest_new = {k: v for k, v in new_shape.items() if k != "enum"}
        if rest_old == rest_new:
            if old_enum - new_enum:
                yield f"field {path} lost enum values {sorted(old_enum - new_enum)}"
            return  # only values added: compatible
    if (
        isinstance(old_shape, dict)
        and isinstance(new_shape, dict)
        and set(old_shape) == set(new_shape)
    ):
        # the same construct around parts that changed: compare the parts (nested objects may
        # gain optional fields, enums may gain values)
        if "items" in old_shape:
            yield from _compare(old_s["items"], new_s["items"], old_root, new_root, f"{path}[]")
            return
        if "anyOf" in old_shape and len(old_s["anyOf"]) == len(new_s["anyOf"]):
            for a, b in zip(old_s["anyOf"], new_s["anyOf"], strict=True):
                yield from _compare(a, b, old_root, new_root, path)
            return
    yield f"field {path} changed type"


def _major(topic: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*)\.v(\d+)", topic)
    return (m.group(1), int(m.group(2))) if m else (topic, 0)


def load_contract(folder: Path) -> dict[str, dict[str, Any]]:
    """``{topic: {event: schema}}`` of a folder of per-event schema files."""
    out: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return out
    for file in sorted(folder.glob("*/*.json")):
        out.setdefault(file.parent.name, {})[file.stem] = json.loads(file.read_text("utf-8"))
    return out


def breaking_changes(
    baseline: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]
) -> list[Break]:
    """What in ``current`` breaks ``baseline``.  A topic whose major version was bumped (the
    baseline's ``….vN`` is gone and a higher one exists) may change freely."""
    breaks: list[Break] = []
    for topic, events in baseline.items():
        if topic not in current:
            base, major = _major(topic)
            if any(_major(t)[0] == base and _major(t)[1] > major for t in current):
                continue  # a new major version replaces it
            breaks.append(Break(topic, "*", "the topic was removed without a new major version"))
            continue
        for name, old in events.items():
            new = current[topic].get(name)
            if new is None:
                breaks.append(Break(topic, name, "the event was removed"))
                continue
            breaks.extend(Break(topic, name, w) for w in _compare(old, new, old, new, ""))
    return breaks


def current_contract() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path, text in schema_files().items():
        out.setdefault(path.parent.name, {})[path.stem] = json.loads(text)
    return out


# -- command line ----------------------------------------------------------------------------


def write(root: Path, extra: Extra | None = None) -> list[Path]:
    """Write the generated files under ``root``; remove schema files of events that are gone."""
    files = generated(extra)
    changed = []
    for path, text in files.items():
        target = root / path
        if not target.is_file() or target.read_text("utf-8") != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, "utf-8")
            changed.append(path)
    for stale in (root / SCHEMAS_PATH).glob("*/*.json"):
        if stale.relative_to(root) not in files:
            stale.unlink()
            changed.append(stale.relative_to(root))
    return changed


def stale_files(root: Path, extra: Extra | None = None) -> list[str]:
    """Differences between the committed files and what the models generate (as diffs)."""
    files = generated(extra)
    out = []
    for path, text in files.items():
        target = root / path
        have = target.read_text("utf-8") if target.is_file() else ""
        if have != text:
            diff = difflib.unified_diff(
                have.splitlines(), text.splitlines(), str(path), f"{path} (generated)", lineterm=""
            )
            out.append("\n".join(list(diff)[:40]))
    for leftover in (root / SCHEMAS_PATH).glob("*/*.json"):
        if leftover.relative_to(root) not in files:
            out.append(f"{leftover.relative_to(root)}: no event generates it any more")
    return out


def main(argv: list[str] | None = None, extra: Extra | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev contracts", description=__doc__.split("\n")[0])
    parser.add_argument(
        "command", nargs="?", default="generate", choices=["generate", "check", "release"]
    )
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.command == "generate":
        changed = write(root, extra)
        print("\n".join(f"wrote {p}" for p in changed) or "contracts are up to date")
        return 0
    if args.command == "release":
        write(root, extra)
        shutil.rmtree(root / BASELINE_PATH, ignore_errors=True)
        shutil.copytree(root / SCHEMAS_PATH, root / BASELINE_PATH)
        print(f"{BASELINE_PATH} is now the contract of this version")
        return 0
    failed = False
    if stale := stale_files(root, extra):
        failed = True
        print("The committed contract differs from the event models; run ./dev contracts:")
        print("\n".join(stale))
    breaks = breaking_changes(load_contract(root / BASELINE_PATH), current_contract())
    if breaks:
        failed = True
        print("Breaking changes against the baseline (bump the topic's major version):")
        print("\n".join(f"  {b}" for b in breaks))
    if not failed:
        print("contracts: generated files up to date, compatible with the baseline")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
