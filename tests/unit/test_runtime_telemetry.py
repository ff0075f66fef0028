"""Tracing helpers: the JSON-lines exporter, traceparent round trips, span helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from libcalico.runtime import (
    context_from_traceparent,
    force_flush_tracing,
    get_tracer,
    inject_traceparent,
    setup_tracing,
    shutdown_tracing,
    start_batch_span,
    start_span_from_traceparent,
)
from libcalico.runtime.jsonl_exporter import JsonlSpanExporter
from libcalico.runtime.telemetry import default_trace_file

REPO = Path(__file__).resolve().parents[2]
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    setup_tracing("unit", jsonl=False, extra_processors=[SimpleSpanProcessor(exporter)])
    yield exporter
    shutdown_tracing()


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_exporter_writes_one_parseable_line_per_span(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "traces.jsonl"  # parent directory created
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(path, "datastore")))
    tracer = provider.get_tracer("t")
    remote = trace.get_current_span(context_from_traceparent(TP)).get_span_context()
    with tracer.start_as_current_span(
        "calico.datastore.v1.Datastore/Create",
        kind=SpanKind.SERVER,
        attributes={"rpc.method": "Create", "keys": ("a", "b")},
        links=[Link(remote, {"why": "caused by"})],
    ) as parent:
        with tracer.start_as_current_span("etcd txn") as child:
            child.add_event("retry", {"attempt": 2})
            child.set_status(Status(StatusCode.ERROR, "conflict"))
    provider.shutdown()

    lines = _read(path)
    assert [d["name"] for d in lines] == ["etcd txn", "calico.datastore.v1.Datastore/Create"]
    inner, outer = lines
    pctx = parent.get_span_context()
    assert outer["trace_id"] == inner["trace_id"] == f"{pctx.trace_id:032x}"
    assert outer["span_id"] == f"{pctx.span_id:016x}"
    assert outer["parent_span_id"] is None
    assert inner["parent_span_id"] == outer["span_id"]
    assert outer["kind"] == "SERVER" and outer["service"] == "datastore"
    assert outer["attributes"] == {"rpc.method": "Create", "keys": ["a", "b"]}
    assert outer["links"] == [
        {
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7",
            "attributes": {"why": "caused by"},
        }
    ]
    assert inner["status"] == {"code": "ERROR", "description": "conflict"}
    assert inner["events"][0]["name"] == "retry"
    assert isinstance(outer["start_ns"], int) and isinstance(outer["end_ns"], int)
    assert outer["end_ns"] >= inner["end_ns"] >= inner["start_ns"] >= outer["start_ns"]


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from libcalico.runtime.jsonl_exporter import JsonlSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(JsonlSpanExporter(Path(sys.argv[1]), sys.argv[2]),
                           max_export_batch_size=64, schedule_delay_millis=1)
    )
    tracer = provider.get_tracer("w")
    for i in range(int(sys.argv[3])):
        with tracer.start_as_current_span(f"span-{i}", attributes={"pad": "x" * 300}):
            pass
    provider.shutdown()
    """
)


def test_several_processes_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"w{n}", "400"], cwd=REPO)
        for n in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    lines = _read(path)  # every line parses: nothing interleaved
    assert len(lines) == 1600
    assert {str(d["service"]) for d in lines} == {"w0", "w1", "w2", "w3"}
    assert len({d["span_id"] for d in lines}) == 1600


def test_traceparent_round_trip(spans: InMemorySpanExporter) -> None:
    assert inject_traceparent() == ""
    with get_tracer().start_as_current_span("op") as span:
        tp = inject_traceparent()
    ctx = span.get_span_context()
    assert tp.startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    back = trace.get_current_span(context_from_traceparent(tp)).get_span_context()
    assert (back.trace_id, back.span_id, back.is_remote) == (ctx.trace_id, ctx.span_id, True)
    assert inject_traceparent(context_from_traceparent(tp)) == tp


@pytest.mark.parametrize(
    "bad", ["", "garbage", "00-zz-yy-01", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"]
)
def test_malformed_traceparent_gives_no_parent(bad: str) -> None:
    ctx = trace.get_current_span(context_from_traceparent(bad)).get_span_context()
    assert not ctx.is_valid


def test_start_span_from_traceparent_child(spans: InMemorySpanExporter) -> None:
    with start_span_from_traceparent("apply", TP, kind=SpanKind.CONSUMER) as span:
        assert trace.get_current_span() is span
    (done,) = spans.get_finished_spans()
    assert done.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert done.parent is not None and done.parent.span_id == 0x00F067AA0BA902B7
    assert done.kind is SpanKind.CONSUMER


def test_start_span_from_traceparent_link_only(spans: InMemorySpanExporter) -> None:
    with get_tracer().start_as_current_span("loop") as loop:
        with start_span_from_traceparent("apply", TP, link_only=True):
            pass
    apply = next(s for s in spans.get_finished_spans() if s.name == "apply")
    assert apply.context.trace_id == loop.get_span_context().trace_id
    assert apply.parent is not None and apply.parent.span_id == loop.get_span_context().span_id
    assert [link.context.span_id for link in apply.links] == [0x00F067AA0BA902B7]


def test_start_span_from_empty_traceparent_nests_in_current(spans: InMemorySpanExporter) -> None:
    with get_tracer().start_as_current_span("outer") as outer:
        with start_span_from_traceparent("inner", ""):
            pass
    inner = next(s for s in spans.get_finished_spans() if s.name == "inner")
    assert inner.parent is not None and inner.parent.span_id == outer.get_span_context().span_id


def test_batch_span_dedupes_and_bounds_links(spans: InMemorySpanExporter) -> None:
    tps = [f"00-{i:032x}-{i:016x}-01" for i in range(1, 41)]
    with start_batch_span("flush", [*tps, tps[0], "", "junk"], max_links=32):
        pass
    (done,) = spans.get_finished_spans()
    assert len(done.links) == 32
    assert done.attributes is not None and done.attributes["calico.batch.links_dropped"] == 8


def test_default_trace_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CALICO_TRACE_FILE", raising=False)
    monkeypatch.setenv("CALICO_STATE_DIR", str(tmp_path))
    assert default_trace_file() == tmp_path / "traces.jsonl"
    monkeypatch.setenv("CALICO_TRACE_FILE", str(tmp_path / "t.jsonl"))
    assert default_trace_file() == tmp_path / "t.jsonl"


def test_setup_writes_to_default_file_and_shutdown_flushes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("CALICO_TRACE_FILE", str(tmp_path / "env.jsonl"))
    setup_tracing("svc")
    with get_tracer().start_as_current_span("op"):
        pass
    shutdown_tracing()
    (line,) = _read(tmp_path / "env.jsonl")
    assert line["name"] == "op" and line["service"] == "svc"


def test_trace_file_off_and_unwritable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CALICO_TRACE_FILE", "off")
    setup_tracing("svc", jsonl_path=tmp_path / "never.jsonl")
    with get_tracer().start_as_current_span("op"):
        pass
    assert force_flush_tracing()
    assert not (tmp_path / "never.jsonl").exists()
    monkeypatch.delenv("CALICO_TRACE_FILE")
    blocker = tmp_path / "file"
    blocker.write_text("")
    setup_tracing("svc", jsonl_path=blocker / "traces.jsonl")  # warns, does not raise
    shutdown_tracing()


def test_otlp_exporter_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    provider = setup_tracing("svc", jsonl=False)
    from libcalico.runtime import telemetry

    kinds = [type(p).__name__ for p in telemetry._switch.processors]
    assert kinds == ["BatchSpanProcessor"]
    exporter = telemetry._switch.processors[0]._batch_processor._exporter  # type: ignore[attr-defined]
    assert type(exporter).__name__ == "OTLPSpanExporter"
    assert provider is trace.get_tracer_provider()
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT")
    setup_tracing("svc", jsonl=False)  # swaps the OTLP processor out again (shut down)
    shutdown_tracing()


def test_server_spans_record_only_while_an_exporter_takes_them(
    spans: InMemorySpanExporter,
) -> None:
    from opentelemetry.context import Context

    from libcalico.runtime.telemetry import start_server_span

    recorded = start_server_span("pkg.Svc/Get", Context(), {"rpc.system": "grpc"})
    assert recorded.is_recording()
    recorded.end()
    assert [s.name for s in spans.get_finished_spans()] == ["pkg.Svc/Get"]
    setup_tracing("unit", jsonl=False)  # tracing off: no processors at all
    idle = start_server_span("pkg.Svc/Get", Context(), {"rpc.system": "grpc"})
    assert not idle.is_recording() and idle.get_span_context().is_valid
    idle.end()
    assert len(spans.get_finished_spans()) == 1
