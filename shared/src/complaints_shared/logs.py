"""Structured logs: one JSON object a line, carrying the trace and span of the work it is about.

Invariants: a line holds the message the code wrote (the platform's log calls pass ids, types
and counts, never request bodies or personal data), the logger, the level, the service and,
inside a span, ``trace_id`` and ``span_id`` as the tracing backend shows them, so an operator
goes from a log line to its trace.  An exception contributes its type and stack frames; its
message only when it is the platform's own (:func:`~complaints_shared.telemetry.safe_message`),
since a driver's message may quote the values it choked on.
"""

from __future__ import annotations

import logging
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

from complaints_shared.telemetry import safe_message


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            line["trace_id"] = format(context.trace_id, "032x")
            line["span_id"] = format(context.span_id, "016x")
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line["error.type"] = type(exc).__qualname__
            line["error.message"] = safe_message(exc)
            line["error.stack"] = "".join(traceback.format_tb(exc.__traceback__))
        return orjson.dumps(line).decode()


def configure_logging(service: str, level: str, fmt: str = "json") -> None:
    """Route every logger (uvicorn's and the libraries' included) to stderr in ``fmt``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in ("httpx", "httpcore"):  # request lines carry URLs and their query strings
        logging.getLogger(name).setLevel(logging.WARNING)
