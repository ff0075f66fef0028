"""``server_span``: SERVER spans recorded without the SDK's Span, as the SDK would record them."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from libcalico.runtime import server_span

SCOPE = InstrumentationScope("libcalico")
ATTRS = {"rpc.system": "grpc", "rpc.service": "pkg.Svc", "rpc.method": "Get"}
PARENT = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def provider(**kw: object) -> TracerProvider:
    return TracerProvider(resource=Resource.create({"service.name": "datastore"}), **kw)  # type: ignore[arg-type]


def under(parent: SpanContext) -> Context:
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def run_both(parent: Context) -> tuple[ReadableSpan, ReadableSpan]:
    """The same span through the SDK and through ``server_span``."""
    sdk_provider = provider()
    exported = InMemorySpanExporter()
    sdk_provider.add_span_processor(SimpleSpanProcessor(exported))
    ours_provider = provider()
    ended: list[ReadableSpan] = []
    spans = [
        sdk_provider.get_tracer("libcalico").start_span(
            "pkg.Svc/Get", context=parent, kind=SpanKind.SERVER, attributes=ATTRS
        ),
        server_span.start(ours_provider, ended.append, SCOPE, "pkg.Svc/Get", parent, ATTRS),
    ]
    for span in spans:
        span.set_attribute("rpc.grpc.status_code", 13)
        span.set_status(Status(StatusCode.ERROR, "INTERNAL"))
        span.record_exception(ValueError("boom"))
        span.end()
    (sdk,) = exported.get_finished_spans()
    (ours,) = ended
    return sdk, ours


def test_records_what_the_sdk_records() -> None:
    sdk, ours = run_both(under(PARENT))
    assert ours.name == sdk.name
    assert ours.kind is sdk.kind is SpanKind.SERVER
    assert ours.parent == sdk.parent == PARENT
    assert ours.context.trace_id == sdk.context.trace_id == PARENT.trace_id
    assert ours.context.span_id != PARENT.span_id
    assert ours.context.trace_flags.sampled
    assert dict(ours.attributes or {}) == dict(sdk.attributes or {})
    assert ours.status.status_code is sdk.status.status_code is StatusCode.ERROR
    assert ours.status.description == sdk.status.description == "INTERNAL"
    assert [e.name for e in ours.events] == [e.name for e in sdk.events] == ["exception"]
    ours_exc, sdk_exc = dict(ours.events[0].attributes or {}), dict(sdk.events[0].attributes or {})
    assert ours_exc.keys() == sdk_exc.keys()
    assert ours_exc["exception.type"] == sdk_exc["exception.type"] == "ValueError"
    assert ours.resource.attributes["service.name"] == "datastore"
    assert ours.instrumentation_scope is not None
    assert ours.instrumentation_scope.name == "libcalico"
    assert ours.start_time is not None and ours.end_time is not None
    assert ours.start_time <= ours.end_time


def test_a_root_span_gets_a_new_trace() -> None:
    sdk, ours = run_both(Context())
    assert ours.parent is None and sdk.parent is None
    assert ours.context.is_valid and ours.context.trace_id != 0


def test_the_current_span_while_it_runs_is_recording_and_carries_its_context() -> None:
    ended: list[ReadableSpan] = []
    span = server_span.start(provider(), ended.append, SCOPE, "pkg.Svc/Get", Context(), ATTRS)
    assert span.is_recording()
    ctx = trace.set_span_in_context(span)
    assert trace.get_current_span(ctx).get_span_context() == span.get_span_context()
    span.end()
    span.end()  # a second end is ignored, as in the SDK
    assert not span.is_recording()
    assert len(ended) == 1


def test_ok_is_final_and_unset_never_overrides() -> None:
    ended: list[ReadableSpan] = []
    span = server_span.start(provider(), ended.append, SCOPE, "x/y", Context(), ATTRS)
    span.set_status(StatusCode.ERROR, "first")
    span.set_status(StatusCode.UNSET)
    assert span._status.status_code is StatusCode.ERROR  # type: ignore[attr-defined]
    span.set_status(StatusCode.OK)
    span.set_status(StatusCode.ERROR, "late")
    span.end()
    assert ended[0].status.status_code is StatusCode.OK


def test_the_providers_sampler_decides() -> None:
    ended: list[ReadableSpan] = []
    span = server_span.start(
        provider(sampler=ALWAYS_OFF), ended.append, SCOPE, "x/y", under(PARENT), ATTRS
    )
    assert not span.is_recording()
    assert span.get_span_context().trace_id == PARENT.trace_id
    span.end()
    assert ended == []


def test_an_unsampled_parent_is_followed() -> None:
    unsampled = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(0))
    ended: list[ReadableSpan] = []
    span = server_span.start(provider(), ended.append, SCOPE, "x/y", under(unsampled), ATTRS)
    assert not span.is_recording()
    assert not span.get_span_context().trace_flags.sampled
    span.end()
    assert ended == []


def test_with_nobody_to_take_it_the_span_keeps_the_trace_but_records_nothing() -> None:
    # Tracing off (no exporter): the ids still reach logs and outgoing calls.
    span = server_span.start(provider(), None, SCOPE, "x/y", under(PARENT), ATTRS)
    assert not span.is_recording()
    ctx = span.get_span_context()
    assert ctx.trace_id == PARENT.trace_id and ctx.span_id != PARENT.span_id
    assert ctx.trace_flags.sampled
    span.end()


@pytest.mark.parametrize("sampler", [None, ParentBased(ALWAYS_ON)], ids=["default", "asked"])
def test_sampling_flags_and_trace_state_are_the_sdks(sampler: Sampler | None) -> None:
    # The default sampler (the SDK's own DEFAULT_ON object) is decided inline, any other is
    # asked; either way the answers, flags (the random-trace-id bit too) and trace state
    # must be the SDK's.

    state = TraceState([("vendor", "x")])
    parents = [
        Context(),
        under(SpanContext(0xABC, 0xDEF, True, TraceFlags(TraceFlags.SAMPLED), state)),
        under(SpanContext(0xABC, 0xDEF, True, TraceFlags(TraceFlags.DEFAULT), state)),
        under(SpanContext(0xABC, 0xDEF, False, TraceFlags(TraceFlags.SAMPLED))),
        under(SpanContext(0xABC, 0xDEF, False, TraceFlags(TraceFlags.DEFAULT))),
    ]
    for parent in parents:
        sdk = provider(sampler=sampler).get_tracer("x").start_span(
            "x/y", context=parent, kind=SpanKind.SERVER
        )
        ended: list[ReadableSpan] = []
        ours = server_span.start(
            provider(sampler=sampler), ended.append, SCOPE, "x/y", parent, ATTRS
        )
        want, got = sdk.get_span_context(), ours.get_span_context()
        assert ours.is_recording() == sdk.is_recording()
        assert got.trace_flags == want.trace_flags
        assert got.trace_state == want.trace_state
        assert (got.trace_id == want.trace_id) == (parent != Context())
