"""Printing a trace from the shared JSONL file: parents, links across traces, torn lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from libcalico.tracetree import build_tree, format_tree, last_trace_id, load_spans, walk


def span(tid: str, sid: str, parent: str | None, name: str, service: str, start: int,
         end: int, links: list[dict[str, Any]] | None = None, **attrs: Any) -> dict[str, Any]:
    return {"trace_id": tid, "span_id": sid, "parent_span_id": parent, "name": name,
            "service": service, "start_ns": start, "end_ns": end, "attributes": attrs,
            "status": {"code": "UNSET"}, "links": links or []}


SPANS = [
    span("t1", "a", None, "apply", "calicoctl", 0, 9_000_000),
    span("t1", "b", "a", "Datastore/Apply", "datastore", 1_000_000, 3_000_000),
    # calc_graph batches changes into its own trace and links back to the write.
    span("t2", "c", None, "flush", "calc_graph", 4_000_000, 5_000_000,
         links=[{"trace_id": "t1", "span_id": "b", "attributes": {}}]),
    span("t2", "d", "c", "iptables-restore", "dataplane", 6_000_000, 8_000_000,
         **{"calico.lines": 42, "calico.node": "node-1"}),
    span("t0", "z", None, "older", "calicoctl", -10, -5),
]


def test_tree_follows_parents_and_links(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SPANS) + '{"torn": ')
    spans = load_spans(path)
    assert len(spans) == 5
    assert last_trace_id(spans, root_service="calicoctl") == "t1"
    roots = build_tree(spans, "t1")
    names = [n.span["name"] for n in walk(roots)]
    assert names == ["apply", "Datastore/Apply", "flush", "iptables-restore"]
    text = format_tree(roots)
    assert "services: calc_graph, calicoctl, dataplane, datastore" in text
    assert "⤷ [calc_graph] flush" in text
    assert "[dataplane] iptables-restore  node=node-1 lines=42" in text
    assert text.splitlines()[0].startswith("trace t1  9.00 ms")


def test_missing_file_and_unknown_trace(tmp_path: Path) -> None:
    assert load_spans(tmp_path / "none.jsonl") == []
    assert format_tree(build_tree([], "x")) == "no spans found for that trace\n"
