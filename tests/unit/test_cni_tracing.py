"""CNI ADD joins the caller's trace when TRACEPARENT is set, with a span per phase."""

from __future__ import annotations

import json
from pathlib import Path

from libcalico.cni import cnilog

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


def test_phases_become_spans_under_the_callers_trace(tmp_path: Path) -> None:
    trace_file = tmp_path / "traces.jsonl"
    env = {
        "TRACEPARENT": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01",
        "CALICO_TRACE_FILE": str(trace_file),
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c0ffee",
    }
    spans = cnilog.make_spans(env)
    assert isinstance(spans, cnilog.TraceSpans)
    for phase in ("ipam_wait", "network", "datastore_write", "policy_wait"):
        with spans.span(phase):
            pass
    spans.finish("ADD", ok=True)

    written = [json.loads(line) for line in trace_file.read_text().splitlines()]
    assert {s["trace_id"] for s in written} == {PARENT_TRACE}
    (root,) = [s for s in written if s["name"] == "cni ADD"]
    assert root["parent_span_id"] == PARENT_SPAN
    assert root["service"] == "cni" and root["attributes"]["cni.container_id"] == "c0ffee"
    children = {s["name"]: s for s in written if s["parent_span_id"] == root["span_id"]}
    assert set(children) == {"cni.ipam_wait", "cni.network", "cni.datastore_write",
                             "cni.policy_wait"}


def test_no_traceparent_means_no_tracing_and_no_sdk_work(tmp_path: Path) -> None:
    assert isinstance(cnilog.make_spans({}), cnilog.NoSpans)
    timings = cnilog.make_spans({cnilog.TIMINGS_ENV: str(tmp_path / "t.jsonl")})
    assert isinstance(timings, cnilog.TimingSpans)
