"""Read the lab's ``traces.jsonl`` back and print one trace as a tree with timings.

Every process appends finished spans to the same file (see
``libcalico.runtime.jsonl_exporter``), so a change can be followed from ``calicoctl apply``
through the datastore and calc_graph to each node's kernel write without a collector.

A downstream stage either continues the trace (its span has the upstream span as parent) or,
when it batches many changes into one unit of work, starts its own trace that *links* to the
upstream spans. Both are shown: linked spans hang under the span they link to, marked ``⤷``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Attributes worth showing inline: counts and sizes of kernel writes, the node, the resource.
_SHOWN = (
    "calico.node", "calico.kind", "calico.name", "calico.revision", "calico.lines",
    "calico.bytes", "calico.chains", "calico.ipsets", "calico.routes", "calico.messages",
    "calico.tool",
)


@dataclass
class SpanNode:
    span: dict[str, Any]
    linked: bool = False
    children: list[SpanNode] = field(default_factory=list)

    @property
    def start(self) -> int:
        return int(self.span.get("start_ns", 0))

    @property
    def end(self) -> int:
        return int(self.span.get("end_ns", self.start))


def load_spans(path: Path) -> list[dict[str, Any]]:
    """Every parseable line of the file; a torn last line (a writer mid-append) is skipped."""
    spans = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            spans.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return spans


def trace_ids_by_recency(spans: Iterable[dict[str, Any]]) -> list[str]:
    first: dict[str, int] = {}
    for s in spans:
        tid = s["trace_id"]
        first[tid] = min(first.get(tid, s["start_ns"]), s["start_ns"])
    return sorted(first, key=first.__getitem__, reverse=True)


def last_trace_id(spans: list[dict[str, Any]], root_service: str | None = None) -> str | None:
    """The newest trace, optionally the newest whose root span came from ``root_service``."""
    roots = {s["trace_id"]: s for s in spans if not s.get("parent_span_id")}
    for tid in trace_ids_by_recency(spans):
        root = roots.get(tid)
        if root_service is None or (root is not None and root.get("service") == root_service):
            return tid
    return None


def build_tree(spans: list[dict[str, Any]], trace_id: str) -> list[SpanNode]:
    """Roots of ``trace_id`` with their descendants, plus spans of other traces linked in."""
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        by_trace[s["trace_id"]].append(s)
    linked_into: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        for link in s.get("links") or ():
            linked_into[link["span_id"]].append(s)

    seen: set[str] = set()

    def grow(trace: str) -> list[SpanNode]:
        members = by_trace.get(trace, [])
        nodes = {s["span_id"]: SpanNode(s) for s in members}
        roots: list[SpanNode] = []
        for node in nodes.values():
            parent = node.span.get("parent_span_id")
            if parent and parent in nodes:
                nodes[parent].children.append(node)
            else:
                roots.append(node)
        for span_id, node in nodes.items():
            for other in linked_into.get(span_id, ()):
                if other["trace_id"] in seen or other["trace_id"] == trace:
                    continue
                seen.add(other["trace_id"])
                for sub in grow(other["trace_id"]):
                    sub.linked = True
                    node.children.append(sub)
        for node in nodes.values():
            node.children.sort(key=lambda n: n.start)
        return sorted(roots, key=lambda n: n.start)

    seen.add(trace_id)
    return grow(trace_id)


def walk(nodes: list[SpanNode]) -> Iterator[SpanNode]:
    for node in nodes:
        yield node
        yield from walk(node.children)


def format_tree(roots: list[SpanNode]) -> str:
    if not roots:
        return "no spans found for that trace\n"
    t0 = min(n.start for n in roots)
    t_end = max(n.end for n in walk(roots))
    services = sorted({n.span.get("service", "?") for n in walk(roots)})
    lines = [
        f"trace {roots[0].span['trace_id']}  {(t_end - t0) / 1e6:.2f} ms  "
        f"services: {', '.join(services)}",
        f"{'OFFSET':>10} {'DURATION':>10}  SPAN",
    ]

    def emit(node: SpanNode, prefix: str, last: bool, top: bool) -> None:
        s = node.span
        branch = "" if top else ("└─ " if last else "├─ ")
        mark = "⤷ " if node.linked else ""
        attrs = s.get("attributes") or {}
        shown = " ".join(
            f"{k.removeprefix('calico.')}={attrs[k]}" for k in _SHOWN if k in attrs
        )
        status = s.get("status", {}).get("code")
        err = "  ERROR" if status == "ERROR" else ""
        lines.append(
            f"{(node.start - t0) / 1e6:>9.2f}ms {(node.end - node.start) / 1e6:>9.2f}ms  "
            f"{prefix}{branch}{mark}[{s.get('service', '?')}] {s['name']}"
            + (f"  {shown}" if shown else "") + err
        )
        child_prefix = prefix if top else prefix + ("   " if last else "│  ")
        for i, child in enumerate(node.children):
            emit(child, child_prefix, i == len(node.children) - 1, False)

    for root in roots:
        emit(root, "", True, True)
    return "\n".join(lines) + "\n"
