"""SERVER spans for RPCs, recorded without the SDK's per-span machinery.

Why: every RPC a calico-py service handles, and every call on a datastore Session, gets a
SERVER span. The SDK's ``Tracer.start_span`` (a ``Span`` with locked, validated
``BoundedAttributes``, bounded event and link lists, processor start hooks) measured ~14 µs
in a loop and ~40 µs per call in a live server here: a tenth of a unary round trip.
``ServerSpan`` takes the same sampling decision with the provider's own sampler and ids (the
SDK's default sampler is decided inline, by its rules), keeps its few fields in plain Python
while the handler runs, and hands the span processors an SDK ``ReadableSpan`` when it ends,
~5 µs in all; with no exporter set up the span is non-recording, ~1.6 µs. Exporters, the
trace file and tests see what an SDK span would have given them.

``libcalico.runtime.telemetry.start_server_span`` decides when this applies: only on the
provider ``setup_tracing`` created, whose one span processor is the runtime's own (a provider
somebody else installed may have processors of its own to call; there the SDK does the work).
Attributes are the caller's, already valid: no limits are applied.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import DEFAULT_ON, Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

__all__ = ["ServerSpan", "start"]

# By (sampled, random trace id): the flags a new span context carries.
_FLAGS = {
    (sampled, random): TraceFlags(
        (TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
        | (TraceFlags.RANDOM_TRACE_ID if random else 0)
    )
    for sampled in (False, True)
    for random in (False, True)
}


class ServerSpan(trace.Span):
    """A recording span that becomes a ``ReadableSpan`` for ``on_end`` when it ends."""

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: Mapping[str, types.AttributeValue],
        *,
        resource: Resource,
        scope: InstrumentationScope,
        on_end: Callable[[ReadableSpan], None],
    ) -> None:
        self._name = name
        self._context = context
        self._parent = parent
        self._attributes: dict[str, types.AttributeValue] = dict(attributes)
        self._events: list[Event] = []
        self._links: list[Link] = []
        self._status = Status(StatusCode.UNSET)
        self._resource = resource
        self._scope = scope
        self._on_end = on_end
        self._start = time.time_ns()
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        if not self._ended:
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if not self._ended:
            self._attributes[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if not self._ended:
            self._events.append(Event(name, attributes, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not self._ended and context.is_valid:
            self._links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        if not self._ended:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rule: OK is final, and UNSET never replaces a status already set.
        if self._ended or self._status.status_code is StatusCode.OK:
            return
        new = status if isinstance(status, Status) else Status(status, description)
        if new.status_code is not StatusCode.UNSET:
            self._status = new

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        event: dict[str, types.AttributeValue] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self._on_end(ReadableSpan(
            self._name,
            context=self._context,
            parent=self._parent,
            resource=self._resource,
            attributes=self._attributes,
            events=self._events,
            links=self._links,
            kind=SpanKind.SERVER,
            status=self._status,
            start_time=self._start,
            end_time=end_time or time.time_ns(),
            instrumentation_scope=self._scope,
        ))  # fmt: skip


def start(
    provider: TracerProvider,
    on_end: Callable[[ReadableSpan], None] | None,
    scope: InstrumentationScope,
    name: str,
    parent_context: Context,
    attributes: Mapping[str, types.AttributeValue],
) -> trace.Span:
    """A SERVER span under ``parent_context``, sampled by ``provider``'s sampler as the SDK
    would: recording (``ServerSpan``) or not (``NonRecordingSpan`` with fresh ids).

    ``on_end=None`` says no processor would take the finished span (tracing is off): the span
    keeps its ids and sampling flag, so logs and outgoing calls still carry the trace, but
    records nothing, and nothing is built for it when it ends."""
    found = trace.get_current_span(parent_context).get_span_context()
    parent = found if found.is_valid else None
    ids = provider.id_generator
    trace_id = parent.trace_id if parent is not None else ids.generate_trace_id()
    sampler = provider.sampler
    if sampler is DEFAULT_ON:
        # The SDK's default, ParentBased(ALWAYS_ON), decided inline: follow the parent's flag,
        # sample a root, keep the parent's trace state. Asking it costs ~1 us in a loop (a
        # SamplingResult per call), a third of the span.
        recording = sampled = parent.trace_flags.sampled if parent is not None else True
        trace_state = parent.trace_state if parent is not None else None
    else:
        result = sampler.should_sample(parent_context, trace_id, name, SpanKind.SERVER, attributes)
        recording = result.decision in (Decision.RECORD_ONLY, Decision.RECORD_AND_SAMPLE)
        sampled = result.decision is Decision.RECORD_AND_SAMPLE
        trace_state = result.trace_state
    # As the SDK does: a root says whether its trace id is random (W3C level 2), a child
    # keeps what its parent said.
    random = parent.trace_flags.random_trace_id if parent else ids.is_trace_id_random()
    context = SpanContext(
        trace_id, ids.generate_span_id(), is_remote=False,
        trace_flags=_FLAGS[sampled, random], trace_state=trace_state,
    )  # fmt: skip
    if not recording or on_end is None:
        return trace.NonRecordingSpan(context)
    return ServerSpan(
        name, context, parent, attributes,
        resource=provider.resource, scope=scope, on_end=on_end,
    )  # fmt: skip
