"""Reading the trace context that message headers carry: the same context the configured
OpenTelemetry propagators give, whichever way it is read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from complaints_shared.telemetry import extract_context

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def _seen(context: Context) -> tuple[object, ...]:
    """What a context tells: its span's context (ids, flags, state, remote) and baggage."""
    sc = trace.get_current_span(context).get_span_context()
    state = tuple(sc.trace_state.items()) if sc.trace_state is not None else None
    return (
        sc.trace_id,
        sc.span_id,
        int(sc.trace_flags),
        sc.is_remote,
        state,
        dict(baggage.get_all(context)),
    )


def _same_as_the_propagators(carrier: dict[str, str]) -> None:
    assert _seen(extract_context(carrier)) == _seen(propagate.extract(dict(carrier)))


@pytest.mark.parametrize(
    "carrier",
    [
        pytest.param({"traceparent": f"00-{TRACE}-{SPAN}-01"}, id="sampled"),
        pytest.param({"traceparent": f"00-{TRACE}-{SPAN}-00"}, id="not sampled"),
        pytest.param({"traceparent": f"00-{TRACE.upper()}-{SPAN}-01"}, id="upper case"),
        pytest.param({"traceparent": f"00-{'0' * 32}-{SPAN}-01"}, id="zero trace id"),
        pytest.param({"traceparent": f"00-{TRACE}-{'0' * 16}-01"}, id="zero span id"),
        pytest.param({"traceparent": f"00-{TRACE}-{SPAN}-01-extra"}, id="00 with more"),
        pytest.param({"traceparent": f"01-{TRACE}-{SPAN}-01-extra"}, id="a later version"),
        pytest.param({"traceparent": f"ff-{TRACE}-{SPAN}-01"}, id="version ff"),
        pytest.param({"traceparent": f" 00-{TRACE}-{SPAN}-01\t"}, id="blanks around"),
        pytest.param(
            {"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "vendor=a,other=b"},
            id="with tracestate",
        ),
        pytest.param(
            {"traceparent": f"00-{TRACE}-{SPAN}-01", "baggage": "tenant=x"}, id="with baggage"
        ),
        pytest.param({"ce_id": "1", "content-type": "application/json"}, id="none"),
    ],
)
def test_headers_give_the_context_the_propagators_give(carrier: dict[str, str]) -> None:
    _same_as_the_propagators({"ce_id": "x", "ce_type": "complaints.intake.X", **carrier})


@given(
    version=st.sampled_from(["00", "01", "ff", "0g"]),
    trace_id=st.one_of(
        st.just("0" * 32), st.text("0123456789abcdefABCDEF_", min_size=31, max_size=33)
    ),
    span_id=st.one_of(st.just("0" * 16), st.text("0123456789abcdef+ ", min_size=15, max_size=17)),
    flags=st.text("0123456789abcdef", min_size=1, max_size=3),
    tail=st.sampled_from(["", "-", "-x", " ", "\n"]),
)
def test_any_traceparent_gives_the_context_the_propagators_give(
    version: str, trace_id: str, span_id: str, flags: str, tail: str
) -> None:
    _same_as_the_propagators({"traceparent": f"{version}-{trace_id}-{span_id}-{flags}{tail}"})


def test_other_propagators_are_honoured() -> None:
    """Configured otherwise (``OTEL_PROPAGATORS``), the headers are read by those alone."""
    before = propagate.get_global_textmap()
    carrier = {"traceparent": f"00-{TRACE}-{SPAN}-01", "baggage": "tenant=x"}
    try:
        propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator()]))
        assert baggage.get_all(extract_context(carrier)) == {}  # no baggage propagator
        propagate.set_global_textmap(CompositePropagator([]))
        assert not trace.get_current_span(extract_context(carrier)).get_span_context().is_valid
    finally:
        propagate.set_global_textmap(before)
    assert baggage.get_all(extract_context(carrier)) == {"tenant": "x"}


@pytest.mark.parametrize(
    ("traceparent", "parent"),
    [
        pytest.param(f"00-{TRACE}-{SPAN}-01", (int(TRACE, 16), int(SPAN, 16)), id="valid"),
        pytest.param(f"00-{TRACE}-{'0' * 16}-01", None, id="zero span id"),
        pytest.param(f"00-{TRACE}-{SPAN[:-1]}x-01", None, id="not hex"),
    ],
)
def test_a_span_started_in_the_context_read_is_the_remote_spans_child(
    traceparent: str, parent: tuple[int, int] | None
) -> None:
    """What the tracer sees when a consumer's span or an appended event's context is made
    under the context read: the remote parent, or none (a new trace) when it is invalid."""
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span(
        "process", context=extract_context({"traceparent": traceparent})
    ) as span:
        seen = span.parent
        carried: dict[str, str] = {}
        propagate.inject(carried)
    if parent is None:
        assert seen is None
        assert carried["traceparent"].split("-")[1] != TRACE
    else:
        assert seen is not None and seen.is_remote
        assert (seen.trace_id, seen.span_id) == parent
        assert carried["traceparent"].split("-")[1] == TRACE
