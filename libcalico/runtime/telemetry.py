"""OpenTelemetry tracing: one TracerProvider per process, W3C ``traceparent`` helpers.

``setup_tracing(service, otlp_endpoint=..., jsonl_path=...)`` installs the global provider
(resource ``service.name``) with

- a ``BatchSpanProcessor`` → OTLP/gRPC exporter when an endpoint is given or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set;
- a ``BatchSpanProcessor`` → ``JsonlSpanExporter`` (always, unless ``jsonl=False`` or
  ``CALICO_TRACE_FILE=off``) at ``jsonl_path``, else ``$CALICO_TRACE_FILE``, else
  ``<state dir>/traces.jsonl`` (state dir ``$CALICO_STATE_DIR`` or ``/run/calico-lab``). If that
  file cannot be opened the process logs a warning and runs without it — traces are an aid,
  not a reason to stay down.

OpenTelemetry lets the global provider be set once per process, so the provider's processors
sit behind one switchable processor: calling ``setup_tracing`` again (tests; several in-process
services) swaps the exporters and shuts the old ones down. The resource keeps the first
service name; RPC spans carry ``calico.service`` for the service that handled them.

Trace context crosses processes in two ways: gRPC metadata (the runtime's interceptors, see
``interceptors``/``channel``) and ``traceparent`` strings stored beside data — the datastore
keeps the writer's ``traceparent`` with each revision so a watcher three services later can
continue or link to the trace. The helpers below are the only code that builds or parses those
strings.

``shutdown_tracing()`` flushes and closes the exporters; the server bootstrap calls it on exit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from libcalico.runtime import server_span
from libcalico.runtime.jsonl_exporter import JsonlSpanExporter
from libcalico.runtime.log import get_logger

__all__ = [
    "DEFAULT_STATE_DIR",
    "context_from_traceparent",
    "default_trace_file",
    "force_flush_tracing",
    "get_tracer",
    "inject_headers",
    "inject_traceparent",
    "link_from_traceparent",
    "setup_tracing",
    "shutdown_tracing",
    "start_batch_span",
    "start_server_span",
    "start_span_from_traceparent",
]

DEFAULT_STATE_DIR = Path("/run/calico-lab")
TRACER_NAME = "libcalico"

_log = get_logger(__name__)
_PROPAGATOR = TraceContextTextMapPropagator()


class _SwitchProcessor(SpanProcessor):
    """Fans spans out to a replaceable tuple of processors."""

    def __init__(self) -> None:
        self.processors: tuple[SpanProcessor, ...] = ()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for p in self.processors:
            p.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for p in self.processors:
            p.on_end(span)

    def shutdown(self) -> None:
        for p in self.processors:
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all([p.force_flush(timeout_millis) for p in self.processors])


_provider: TracerProvider | None = None
#: True when ``_provider`` is the one ``setup_tracing`` created and installed: its only span
#: processor is ``_switch``, so ``server_span`` may hand finished spans to it directly.
_owned = False
_switch = _SwitchProcessor()
_SCOPE = InstrumentationScope(TRACER_NAME)
# A proxy until a provider is installed; used where the SDK does the work.
_tracer = trace.get_tracer(TRACER_NAME)


def default_trace_file(state_dir: Path | None = None) -> Path:
    """``$CALICO_TRACE_FILE``, else ``<state dir>/traces.jsonl``."""
    from_env = os.environ.get("CALICO_TRACE_FILE", "").strip()
    if from_env and from_env.lower() not in ("off", "none"):
        return Path(from_env)
    base = state_dir or Path(os.environ.get("CALICO_STATE_DIR") or DEFAULT_STATE_DIR)
    return base / "traces.jsonl"


def _otlp_processor(endpoint: str) -> SpanProcessor:
    # Imported here: the OTLP exporter pulls in its own grpc channel machinery, which processes
    # without a collector never need.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    insecure = not endpoint.startswith("https://")
    return BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))


def setup_tracing(
    service: str,
    *,
    otlp_endpoint: str | None = None,
    jsonl_path: Path | None = None,
    jsonl: bool = True,
    state_dir: Path | None = None,
    extra_processors: Sequence[SpanProcessor] = (),
) -> TracerProvider:
    """Install (or reconfigure) the process's tracer provider; see the module docstring.

    ``extra_processors`` are added as given (tests pass a ``SimpleSpanProcessor`` over an
    in-memory exporter).
    """
    global _provider, _owned
    if _provider is None:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(_switch)
        trace.set_tracer_provider(provider)
        installed = trace.get_tracer_provider()
        _owned = installed is provider
        if installed is not provider and isinstance(installed, TracerProvider):
            # Someone (a test harness, an auto-instrumentation agent) set the global provider
            # first and OpenTelemetry refuses to replace it: feed our exporters from theirs.
            installed.add_span_processor(_switch)
            provider = installed
        _provider = provider

    processors: list[SpanProcessor] = []
    endpoint = (
        otlp_endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    if endpoint:
        processors.append(_otlp_processor(endpoint))
    env_file = os.environ.get("CALICO_TRACE_FILE", "").strip().lower()
    path: Path | None = None
    if jsonl and env_file not in ("off", "none"):
        path = jsonl_path or default_trace_file(state_dir)
        try:
            processors.append(BatchSpanProcessor(JsonlSpanExporter(path, service)))
        except OSError as exc:
            _log.warning("trace file unavailable; spans not written", path=path, error=str(exc))
            path = None
    processors.extend(extra_processors)

    old = _switch.processors
    _switch.processors = tuple(processors)
    for p in old:
        p.shutdown()
    _log.info("tracing set up", service=service, otlp_endpoint=endpoint or None, trace_file=path)
    return _provider


def force_flush_tracing(timeout_millis: int = 5000) -> bool:
    """Export every finished span now (tests read the trace file right after)."""
    return _switch.force_flush(timeout_millis)


def shutdown_tracing() -> None:
    """Flush and close the exporters; later spans are dropped until ``setup_tracing`` again."""
    old = _switch.processors
    _switch.processors = ()
    for p in old:
        p.force_flush(5000)
        p.shutdown()


def get_tracer(name: str = TRACER_NAME) -> trace.Tracer:
    return trace.get_tracer(name)


def start_server_span(
    name: str, parent: Context, attributes: Mapping[str, AttributeValue]
) -> trace.Span:
    """The SERVER span of one RPC under ``parent``: built by ``server_span`` on our own
    provider (see there why; non-recording while no exporter is set up, as with
    ``CALICO_TRACE_FILE=off`` and no OTLP endpoint), by the SDK on anyone else's,
    non-recording with no provider."""
    provider = _provider
    if provider is None or not _owned:
        return _tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    on_end = _switch.on_end if _switch.processors else None
    return server_span.start(provider, on_end, _SCOPE, name, parent, attributes)


def inject_headers(carrier: dict[str, str], context: Context | None = None) -> None:
    """Add ``traceparent`` (and ``tracestate`` when set) for ``context`` (default: current)."""
    _PROPAGATOR.inject(carrier, context=context)


def inject_traceparent(context: Context | None = None) -> str:
    """The current (or given) span context as a ``traceparent`` header; ``""`` when none."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier.get("traceparent", "")


def context_from_traceparent(traceparent: str, tracestate: str = "") -> Context:
    """A context whose parent is the remote span named by ``traceparent``.

    An empty or malformed header yields an empty context (no parent).
    """
    carrier: Mapping[str, str] = (
        {"traceparent": traceparent, "tracestate": tracestate}
        if tracestate
        else {"traceparent": traceparent}
    )
    return _PROPAGATOR.extract(carrier, context=Context())


def link_from_traceparent(traceparent: str) -> Link | None:
    """A span link to the span named by ``traceparent``; ``None`` when it names none."""
    span_ctx = trace.get_current_span(context_from_traceparent(traceparent)).get_span_context()
    return Link(span_ctx) if span_ctx.is_valid else None


@contextmanager
def start_span_from_traceparent(
    name: str,
    traceparent: str,
    link_only: bool = False,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """Open a span (made current) continuing the trace in ``traceparent``.

    ``link_only=False``: the span is a child of the remote span. ``link_only=True``: the span
    belongs to the current trace (or starts a new one) and *links* to the remote span — for
    work caused by an event but not part of its request (a watcher applying an update).
    An empty or malformed ``traceparent`` leaves the span a child of the current context.
    """
    remote = context_from_traceparent(traceparent) if traceparent else None
    remote_valid = remote is not None and trace.get_current_span(remote).get_span_context().is_valid
    links: list[Link] = []
    parent: Context | None = None
    if remote_valid and remote is not None:
        if link_only:
            links.append(Link(trace.get_current_span(remote).get_span_context()))
        else:
            parent = remote
    with get_tracer().start_as_current_span(
        name,
        context=parent if parent is not None else otel_context.get_current(),
        kind=kind,
        links=links,
        attributes=dict(attributes) if attributes else None,
    ) as span:
        yield span


@contextmanager
def start_batch_span(
    name: str,
    traceparents: Iterable[str],
    *,
    max_links: int = 32,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """One span for a batch of updates, linking to (at most ``max_links``) distinct causes.

    Spans per batch, not per object: a batch of 5,000 updates is one span with a bounded link
    list and a ``calico.batch.links_dropped`` count.
    """
    links: list[Link] = []
    seen: set[str] = set()
    dropped = 0
    for tp in traceparents:
        if not tp or tp in seen:
            continue
        seen.add(tp)
        link = link_from_traceparent(tp)
        if link is None:
            continue
        if len(links) >= max_links:
            dropped += 1
        else:
            links.append(link)
    attrs: dict[str, Any] = dict(attributes or {})
    if dropped:
        attrs["calico.batch.links_dropped"] = dropped
    with get_tracer().start_as_current_span(name, links=links, attributes=attrs or None) as span:
        yield span
