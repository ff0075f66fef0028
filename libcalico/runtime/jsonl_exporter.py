"""An OpenTelemetry span exporter that appends one JSON object per span to a file.

Every process of the lab appends to the same ``traces.jsonl``, so a whole trace (calicoctl →
datastore → calc_graph → dataplane) can be read back with ``grep <trace_id>`` and no collector.
Several writers share the file safely because the file is opened with ``O_APPEND`` and each
export batch is encoded first and handed to the kernel in a single ``write()`` made only of
whole lines: with ``O_APPEND`` the kernel moves to the end and writes under the inode lock, so
lines from different processes never interleave or overwrite each other.

One line::

    {"trace_id":"4bf92f35...","span_id":"00f067aa0ba902b7","parent_span_id":null,
     "name":"calico.datastore.v1.Datastore/Create","kind":"SERVER","service":"datastore",
     "start_ns":1700000000000000000,"end_ns":1700000000000250000,"duration_ms":0.25,
     "attributes":{"rpc.system":"grpc",...},"status":{"code":"UNSET","description":null},
     "events":[],"links":[{"trace_id":"...","span_id":"...","attributes":{}}]}

``service`` is the span's ``calico.service`` attribute when it has one (the runtime sets it on
RPC spans, which matters when several services share a process in tests), else the exporter's.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["JsonlSpanExporter", "span_to_dict"]

SERVICE_ATTRIBUTE = "calico.service"


def _attrs(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    if not attributes:
        return {}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}


def span_to_dict(span: ReadableSpan, service: str = "") -> dict[str, Any]:
    """The JSON-ready form of a finished span (see the module docstring)."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    attributes = _attrs(span.attributes)
    svc = attributes.get(SERVICE_ATTRIBUTE) or service
    if not svc and span.resource is not None:
        svc = span.resource.attributes.get("service.name", "")
    start = span.start_time or 0
    end = span.end_time or start
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": svc,
        "start_ns": start,
        "end_ns": end,
        "duration_ms": round((end - start) / 1e6, 6),
        "attributes": attributes,
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "events": [
            {"name": e.name, "ts_ns": e.timestamp, "attributes": _attrs(e.attributes)}
            for e in span.events
        ],
        "links": [
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
                "attributes": _attrs(link.attributes),
            }
            for link in span.links
        ],
    }


class JsonlSpanExporter(SpanExporter):
    """Append spans to ``path`` as JSON lines; safe with other processes appending too."""

    def __init__(self, path: Path, service: str = "") -> None:
        self.path = Path(path)
        self.service = service
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd: int | None = os.open(self.path, flags, 0o644)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        data = "".join(
            json.dumps(
                span_to_dict(s, self.service),
                default=str,
                ensure_ascii=False,
                separators=(",", ":"),
            )
            + "\n"
            for s in spans
        ).encode()
        with self._lock:
            if self._fd is None:
                return SpanExportResult.FAILURE
            try:
                view = memoryview(data)
                while view:
                    # One write() in practice; the loop only finishes a short write (disk full
                    # or a signal), which is the one case where lines could interleave.
                    written = os.write(self._fd, view)
                    view = view[written:]
            except OSError:
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
