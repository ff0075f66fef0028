"""Policy-programming and pod-readiness latency, Felix-style counters, endpoint status files.

The driver runs on fakes (``services.dataplane.testing``); batches carry
``datastore_commit_unix_ns`` as calc_graph's Sync stream does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prometheus_client import REGISTRY

from libcalico import endpoint_status
from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
from services.calc_graph.fanout import Batch as GraphBatch
from services.calc_graph.servicer import WireCache, encode
from services.dataplane import messages as m
from services.dataplane.commands import ExecRunner, ToolStats
from services.dataplane.driver import Driver
from services.dataplane.metrics import observe_driver
from services.dataplane.stream import Batch
from services.policy import examples as ex

from .test_dataplane_driver import IFACE, apply, make, snapshot


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def feed(d: Driver, msgs: list, age_s: float) -> None:  # type: ignore[type-arg]
    d._on_source_batch(Batch(msgs, "", time.time_ns() - int(age_s * 1e9), time.perf_counter()))


async def test_latencies_counters_and_status_files(tmp_path: Path) -> None:
    status_dir = tmp_path / "endpoint-status"
    d, _, nl, _ = make(tmp_path, endpoint_status_dir=str(status_dir))
    nl.add_link(IFACE, mac="ee:ee:ee:ee:ee:ee")
    runner = ExecRunner(stats={"iptables-legacy-restore": ToolStats(calls=2, input_lines=40),
                               "ipset": ToolStats(calls=1, input_lines=3)})
    observe_driver(d, runner)
    policy_before = sample("calico_dataplane_policy_programming_seconds_count")
    policy_sum = sample("calico_dataplane_policy_programming_seconds_sum")
    ready_before = sample("calico_dataplane_pod_network_ready_seconds_count")
    lines_before = sample("calico_dataplane_exec_input_lines_total",
                          {"tool": "iptables-legacy-restore"})
    ipset_before = sample("calico_dataplane_exec_total", {"tool": "ipset"})
    resync_before = sample("calico_dataplane_resyncs_total", {"kind": "iptables"})

    feed(d, [*snapshot(), m.in_sync()], age_s=0.2)
    assert await apply(d)
    assert sample("calico_dataplane_policy_programming_seconds_count") == policy_before + 1
    assert sample("calico_dataplane_policy_programming_seconds_sum") - policy_sum >= 0.2
    # The snapshot's endpoint came up in this apply: the pod's network is ready.
    assert sample("calico_dataplane_pod_network_ready_seconds_count") == ready_before + 1
    assert sample("calico_dataplane_exec_input_lines_total",
                  {"tool": "iptables-legacy-restore"}) == lines_before + 40
    assert sample("calico_dataplane_exec_total", {"tool": "ipset"}) == ipset_before + 1
    assert sample("calico_dataplane_resyncs_total", {"kind": "iptables"}) == resync_before + 1

    name = endpoint_status.filename("k8s", "default/pod-a", "eth0")
    data = json.loads((status_dir / name).read_text())
    assert (data["status"], data["ifaceName"]) == ("up", IFACE)
    assert endpoint_status.read(status_dir, name) == data

    # A policy change: one more observation; the endpoint is not "ready" again.
    feed(d, [ex.profile("kns.other")], age_s=0.0)
    assert await apply(d)
    assert sample("calico_dataplane_policy_programming_seconds_count") == policy_before + 2
    assert sample("calico_dataplane_pod_network_ready_seconds_count") == ready_before + 1

    # The endpoint goes: its status file goes with it.
    feed(d, [ex.wep_remove(IFACE, "default/pod-a")], age_s=0.0)
    assert await apply(d)
    assert not (status_dir / name).exists()

    stream_before = sample("calico_dataplane_resyncs_total", {"kind": "stream"})
    d.new_generation()
    d.on_batch([*snapshot(), m.in_sync()])
    assert await apply(d)
    assert sample("calico_dataplane_resyncs_total", {"kind": "stream"}) == stream_before + 1


def test_sync_batch_carries_the_commit_time() -> None:
    batch = GraphBatch([ex.profile("kns.a")], "00-" + "1" * 32 + "-" + "2" * 16 + "-01", 42,
                       commit_unix_ns=1_700_000_000_123_456_789)
    ((data, count),) = list(encode(batch, 7, WireCache()))
    sb = cg.SyncBatch.FromString(data)
    assert (count, sb.datastore_commit_unix_ns, sb.datastore_revision) == (
        1, 1_700_000_000_123_456_789, 42)
    assert sb.messages[0].sequence_number == 7
