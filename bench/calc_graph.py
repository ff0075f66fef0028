"""calc_graph at Calico's benchmark scale, fed in-process (no gRPC, no datastore).

    python bench/calc_graph.py [--scale 0.01|0.1|1] [--changes N] [--json]

Full scale (``--scale 1``): 1,000 nodes, 250,000 workload endpoints (200 on the measured node),
10,000 policies, 1,000 NetworkSets, plus 1,000 namespaces, 4 IPAM blocks per node and the nodes'
VXLAN tunnels. The generated cluster looks like a real one: pods of a deployment share labels,
most policies are namespaced and select an app with rules on tiers and namespaces, some egress
rules go to network sets, a few global policies apply everywhere.

Measured, with the measured node subscribed from the start (as a Felix connected during a
resync would be):

- time to the measured node's InSync: graph time (applying updates and flushing; building the
  update dicts, which the syncer would do, is reported separately as generator time) from the
  first update to the flush that queues InSync;
- latency of an endpoint label change to the affected updates queued on the node's stream
  (apply + flush), median and p99 over ``--changes`` changes that each move a remote endpoint
  into or out of an IP set the measured node uses, or relabel one of its own endpoints;
- sustained updates/s (per CPU-second): a stream of label changes, endpoint creates and
  deletes applied in batches of 100 with a flush after each batch (the service flushes every
  10 ms);
- peak RSS of the process.

Targets at full scale: InSync <= 10 s, change <= 20 ms median, RSS <= 3 GiB.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libcalico import keys
from libcalico.client.syncer import SyncStatus, Update
from libcalico.model.names import wep_name
from services.calc_graph.driver import HeapPolicy
from services.calc_graph.fanout import Subscriber
from services.calc_graph.graph import CalcGraph, build_graph

FULL = {"nodes": 1000, "weps": 250_000, "policies": 10_000, "netsets": 1000}
MEASURED = "node-0"
LOCAL_WEPS = 200
PODS_PER_APP = 25
APPS_PER_NS = 10
TIERS = ("web", "api", "db", "cache")


def _res(
    kind: str,
    name: str,
    spec: dict[str, Any],
    ns: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "resourceVersion": "1"}
    if ns:
        md["namespace"] = ns
    if labels:
        md["labels"] = labels
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": md, "spec": spec}


class Cluster:
    """Deterministic generator of a cluster's resources, as syncer updates."""

    def __init__(self, scale: float, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.n_nodes = max(3, round(FULL["nodes"] * scale))
        self.n_weps = max(LOCAL_WEPS * 2, round(FULL["weps"] * scale))
        self.n_policies = max(20, round(FULL["policies"] * scale))
        self.n_netsets = max(5, round(FULL["netsets"] * scale))
        self.pods_per_ns = PODS_PER_APP * APPS_PER_NS
        self.n_ns = max(2, self.n_weps // self.pods_per_ns)
        self.rev = 0
        self.pods: list[dict[str, Any]] = []  # ns, pod, app, tier, node, ip
        self._plan_pods()

    def _next(self) -> int:
        self.rev += 1
        return self.rev

    def _plan_pods(self) -> None:
        # Each node's pods take addresses from that node's own /24 (four /26 blocks), as IPAM
        # with block affinity hands them out.
        base = int(ipaddress.ip_address("10.0.0.0"))
        others = [f"node-{i}" for i in range(1, self.n_nodes)]
        local_every = max(1, self.n_weps // LOCAL_WEPS)
        used: dict[str, int] = {}
        for i in range(self.n_weps):
            ns_i = i // self.pods_per_ns % self.n_ns
            app_i = i // PODS_PER_APP % APPS_PER_NS
            node = (
                MEASURED
                if i % local_every == 0 and i // local_every < LOCAL_WEPS
                else (others[i % len(others)])
            )
            k = used.get(node, 0)
            used[node] = k + 1
            node_i = int(node.split("-")[1])
            self.pods.append(
                {
                    "ns": f"ns-{ns_i}",
                    "pod": f"app{app_i}-{i}",
                    "app": f"app{app_i}",
                    "tier": TIERS[app_i % len(TIERS)],
                    "node": node,
                    "ip": str(ipaddress.ip_address(base + node_i * 256 + k)),
                }
            )

    # -- resources ---------------------------------------------------------------------------

    def wep_update(
        self, p: dict[str, Any], labels: dict[str, str] | None = None, delete: bool = False
    ) -> Update:
        name = wep_name(p["node"], "k8s", p["pod"], "eth0")
        key = keys.resource_key("WorkloadEndpoint", name, p["ns"])
        if delete:
            return Update(key, None, self._next(), "")
        lab = labels or {"app": p["app"], "tier": p["tier"], "pod-template-hash": p["app"] + "h"}
        spec = {
            "orchestrator": "k8s",
            "node": p["node"],
            "pod": p["pod"],
            "endpoint": "eth0",
            "interfaceName": "cali" + format(abs(hash(p["pod"])) % 16**11, "011x"),
            "ipNetworks": [p["ip"] + "/32"],
            "profiles": [f"kns.{p['ns']}", f"ksa.{p['ns']}.default"],
            "serviceAccountName": "default",
        }
        if p["tier"] == "db":
            spec["ports"] = [{"name": "sql", "protocol": "TCP", "port": 5432}]
        return Update(key, _res("WorkloadEndpoint", name, spec, p["ns"], lab), self._next(), "")

    def updates(self) -> Iterator[Update]:
        for i in range(self.n_ns):
            ns = f"ns-{i}"
            labels = {
                "pcns.team": f"team{i % 20}",
                "pcns.env": "prod" if i % 3 else "dev",
                "pcns.projectcalico.org/name": ns,
            }
            spec = {
                "ingress": [{"action": "Allow"}],
                "egress": [{"action": "Allow"}],
                "labelsToApply": labels,
            }
            yield Update(
                keys.resource_key("Profile", f"kns.{ns}"),
                _res("Profile", f"kns.{ns}", spec),
                self._next(),
                "",
            )
            sa = f"ksa.{ns}.default"
            yield Update(
                keys.resource_key("Profile", sa),
                _res("Profile", sa, {"labelsToApply": {"pcsa.projectcalico.org/name": "default"}}),
                self._next(),
                "",
            )
        yield Update(
            keys.resource_key("IPPool", "pool"),
            _res(
                "IPPool",
                "pool",
                {
                    "cidr": "10.0.0.0/8",
                    "vxlanMode": "CrossSubnet",
                    "natOutgoing": True,
                    "blockSize": 26,
                },
            ),
            self._next(),
            "",
        )
        for i in range(self.n_nodes):
            name = f"node-{i}"
            ip = ipaddress.ip_address(int(ipaddress.ip_address("172.16.0.0")) + i + 1)
            spec = {
                "bgp": {"ipv4Address": f"{ip}/20"},
                "ipv4VXLANTunnelAddr": str(
                    ipaddress.ip_address(int(ipaddress.ip_address("10.255.0.0")) + i + 1)
                ),
            }
            yield Update(
                keys.resource_key("Node", name),
                _res("Node", name, spec, labels={"rack": f"r{i % 40}"}),
                self._next(),
                "",
            )
        yield from self._blocks()
        for j in range(self.n_netsets):
            ns = f"ns-{j % self.n_ns}"
            nets = [f"100.{j % 250}.{k}.0/24" for k in range(10)]
            yield Update(
                keys.resource_key("NetworkSet", f"set-{j}", ns),
                _res("NetworkSet", f"set-{j}", {"nets": nets}, ns, {"role": f"external-{j % 100}"}),
                self._next(),
                "",
            )
        yield from self._policies()
        for p in self.pods:
            yield self.wep_update(p)

    def _blocks(self) -> Iterator[Update]:
        by_block: dict[str, list[dict[str, Any]]] = {}
        for p in self.pods:
            cidr = str(ipaddress.ip_network(f"{p['ip']}/26", strict=False))
            by_block.setdefault(cidr, []).append(p)
        for cidr, pods in by_block.items():
            owner = pods[0]["node"]
            start = int(ipaddress.ip_network(cidr).network_address)
            allocations: list[int | None] = [None] * 64
            attrs: list[dict[str, Any]] = []
            for p in pods:
                allocations[int(ipaddress.ip_address(p["ip"])) - start] = len(attrs)
                attrs.append(
                    {
                        "handle_id": f"k8s-pod-network.{p['pod']}",
                        "secondary": {"node": owner, "namespace": p["ns"], "pod": p["pod"]},
                    }
                )
            value = {
                "cidr": cidr,
                "affinity": f"host:{owner}",
                "allocations": allocations,
                "unallocated": [i for i, a in enumerate(allocations) if a is None],
                "attributes": attrs,
                "deleted": False,
            }
            yield Update(keys.block_key(cidr), value, self._next(), "")

    def _policies(self) -> Iterator[Update]:
        n_global = max(5, self.n_policies // 200)
        for i in range(n_global):
            spec: dict[str, Any] = {
                "order": 10 + i,
                "selector": "has(app)" if i % 2 else "all()",
                "types": ["Ingress", "Egress"],
                "ingress": [{"action": "Deny", "source": {"selector": f"role == 'external-{i}'"}}],
                "egress": [{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}}],
            }
            name = f"global-{i}"
            yield Update(
                keys.resource_key("GlobalNetworkPolicy", name),
                _res("GlobalNetworkPolicy", name, spec),
                self._next(),
                "",
            )
        for i in range(self.n_policies - n_global):
            ns_i = i % self.n_ns
            app = f"app{(i // self.n_ns) % APPS_PER_NS}"
            kind = i % 4
            rules: list[dict[str, Any]]
            if kind == 0:
                rules = [
                    {
                        "action": "Allow",
                        "protocol": "TCP",
                        "source": {"selector": "tier == 'web'"},
                        "destination": {"ports": [80, 443]},
                    }
                ]
            elif kind == 1:
                rules = [
                    {
                        "action": "Allow",
                        "protocol": "TCP",
                        "source": {
                            "namespaceSelector": f"team == 'team{i % 20}'",
                            "selector": "tier in {'api', 'web'}",
                        },
                        "destination": {"ports": ["sql"]},
                    }
                ]
            elif kind == 2:
                rules = [{"action": "Allow", "source": {"selector": f"app == '{app}'"}}]
            else:
                rules = [{"action": "Allow", "source": {"namespaceSelector": "env == 'prod'"}}]
            spec = {
                "order": 100 + i % 50,
                "selector": f"app == '{app}'",
                "types": ["Ingress", "Egress"],
                "ingress": rules,
                "egress": [
                    {
                        "action": "Allow",
                        "destination": {"selector": f"role == 'external-{i % 100}'"},
                    }
                ],
            }
            name = f"pol-{i}"
            ns = f"ns-{ns_i}"
            yield Update(
                keys.resource_key("NetworkPolicy", name, ns),
                _res("NetworkPolicy", name, spec, ns),
                self._next(),
                "",
            )


# -- measurement ----------------------------------------------------------------------------


class GCTimer:
    """Time spent in the cyclic garbage collector (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.collections = 0
        self._start = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._start
            self.collections += 1


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(scale: float, changes: int, stream_updates: int, subscribe_all: bool) -> dict[str, Any]:
    cluster = Cluster(scale)
    graph: CalcGraph = build_graph()
    sub = Subscriber(MEASURED, max_batches=10**9, max_messages=10**12)
    graph.subscribe(sub)
    others = []
    if subscribe_all:  # every node's driver connected, as in production
        for i in range(1, cluster.n_nodes):
            others.append(Subscriber(f"node-{i}", max_batches=10**9, max_messages=10**12))
            graph.subscribe(others[-1])
    gen_time = graph_time = graph_cpu = 0.0
    batch: list[Update] = []
    n_updates = 0
    gct = GCTimer()
    heap = HeapPolicy()  # as the service's driver does
    t_start = time.perf_counter()

    streamed: list[list[Any]] = [[] for _ in range(len(others) + 1)]
    all_messages = 0

    def stream() -> None:
        # What the gRPC streams do continuously: take queued batches off every subscriber.
        # The measured node's batches are kept to check its snapshot ends with InSync.
        nonlocal all_messages
        for i, s in enumerate([sub, *others]):
            for b in s.drain():
                all_messages += len(b.messages)
                if i == 0:
                    streamed[0].append(b)

    def apply(batch: list[Update], flush: bool) -> None:
        nonlocal graph_time, graph_cpu
        t, c = time.perf_counter(), time.process_time()
        graph.on_updates(batch)
        heap.after_updates(len(batch))
        if flush:
            graph.flush()
        graph_time += time.perf_counter() - t
        graph_cpu += time.process_time() - c
        stream()

    t = time.perf_counter()
    flushes = 0
    for u in cluster.updates():
        batch.append(u)
        if len(batch) == 1000:
            gen_time += time.perf_counter() - t
            flushes += 1
            apply(batch, flush=flushes % 50 == 0)  # the service flushes every 0.5 s in resync
            n_updates += len(batch)
            batch = []
            t = time.perf_counter()
    gen_time += time.perf_counter() - t
    apply(batch, flush=False)
    n_updates += len(batch)
    t, c = time.perf_counter(), time.process_time()
    graph.on_status(SyncStatus.IN_SYNC)
    heap.freeze()
    graph.flush()
    graph_time += time.perf_counter() - t
    graph_cpu += time.process_time() - c
    wall_in_sync = time.perf_counter() - t_start
    stream()
    gc_in_sync = gct.total
    snapshot = streamed[0]
    assert snapshot and snapshot[-1].messages[-1].WhichOneof("payload") == "in_sync"
    snapshot_messages_total = sum(len(b.messages) for b in snapshot)
    snapshot_messages = snapshot_messages_total
    stats = graph.stats()

    # A late subscriber for another node: the snapshot cost of a node joining an in-sync graph.
    late = Subscriber("node-1", max_batches=10**9, max_messages=10**12)
    t = time.perf_counter()
    graph.subscribe(late)
    graph.flush()
    late_snapshot = time.perf_counter() - t
    late_messages = sum(len(b.messages) for b in late.drain())
    graph.unsubscribe(late)
    graph.flush()

    latencies = label_changes(graph, cluster, sub, changes, others)
    ups = sustained(graph, cluster, sub, stream_updates, others)
    return {
        "scale": scale,
        "nodes": cluster.n_nodes,
        "workload_endpoints": cluster.n_weps,
        "local_endpoints": sum(1 for p in cluster.pods if p["node"] == MEASURED),
        "policies": cluster.n_policies,
        "network_sets": cluster.n_netsets,
        "namespaces": cluster.n_ns,
        "updates_to_in_sync": n_updates,
        "in_sync_graph_s": round(graph_time, 3),
        "in_sync_graph_cpu_s": round(graph_cpu, 3),
        "in_sync_wall_s": round(wall_in_sync, 3),
        "generator_s": round(gen_time, 3),
        "gc_s_to_in_sync": round(gc_in_sync, 3),
        "snapshot_messages": snapshot_messages,
        "subscribed_nodes": 1 + len(others),
        "messages_to_all_subscribers": all_messages,
        "late_subscriber_snapshot_s": round(late_snapshot, 3),
        "late_subscriber_messages": late_messages,
        "change_latency_ms_median": round(statistics.median(latencies) * 1000, 3),
        "change_latency_ms_p99": round(_p99(latencies) * 1000, 3),
        "changes": len(latencies),
        "updates_per_s": round(ups),
        "peak_rss_mib": round(rss_mib()),
        "graph": stats,
    }


def _p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


def label_changes(
    graph: CalcGraph, cluster: Cluster, sub: Subscriber, n: int, others: list[Subscriber]
) -> list[float]:
    """Each change moves an endpoint into or out of a set the measured node uses, or relabels
    one of its own endpoints; latency = apply + flush until batches are queued."""
    rng = random.Random(7)
    local = [p for p in cluster.pods if p["node"] == MEASURED]
    remote_web = [p for p in cluster.pods if p["node"] != MEASURED and p["tier"] == "web"]
    latencies: list[float] = []
    for i in range(n):
        p = rng.choice(local) if i % 4 == 0 else rng.choice(remote_web)
        flipped = "db" if p["tier"] == "web" else "web"
        p["tier"] = flipped
        u = cluster.wep_update(p)
        t = time.perf_counter()
        graph.on_updates([u])
        graph.flush()
        dt = time.perf_counter() - t
        for o in others:
            o.drain()
        if sub.drain():
            latencies.append(dt)
    return latencies or [0.0]


def sustained(
    graph: CalcGraph, cluster: Cluster, sub: Subscriber, n: int, others: list[Subscriber]
) -> float:
    rng = random.Random(11)
    base = int(ipaddress.ip_address("11.0.0.0"))  # outside every block: no routes change
    updates: list[Update] = []
    created: list[dict[str, Any]] = []
    for i in range(n):
        r = i % 10
        if r < 6:
            p = rng.choice(cluster.pods)
            p["tier"] = rng.choice(TIERS)
            updates.append(cluster.wep_update(p))
        elif r < 9 or not created:
            p = {
                "ns": f"ns-{rng.randrange(cluster.n_ns)}",
                "pod": f"extra-{i}",
                "app": f"app{rng.randrange(APPS_PER_NS)}",
                "tier": rng.choice(TIERS),
                "node": f"node-{rng.randrange(cluster.n_nodes)}",
                "ip": str(ipaddress.ip_address(base + i)),
            }
            created.append(p)
            updates.append(cluster.wep_update(p))
        else:
            updates.append(cluster.wep_update(created.pop(), delete=True))
    c = time.process_time()
    for i in range(0, len(updates), 100):
        graph.on_updates(updates[i : i + 100])
        graph.flush()
        sub.drain()
        for o in others:
            o.drain()
    return len(updates) / (time.process_time() - c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--changes", type=int, default=400)
    ap.add_argument("--stream", type=int, default=20_000, help="updates in the sustained run")
    ap.add_argument(
        "--subscribe-all",
        action="store_true",
        help="every node subscribed, not only the measured one",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = run(args.scale, args.changes, args.stream, args.subscribe_all)
    if args.json:
        print(json.dumps(result))
        return
    rows = [
        (
            "scale",
            f"{result['scale']} ({result['nodes']} nodes, {result['workload_endpoints']} "
            f"WEPs, {result['local_endpoints']} local, {result['policies']} policies, "
            f"{result['network_sets']} NetworkSets)",
        ),
        (
            "time to InSync (graph)",
            f"{result['in_sync_graph_s']} s wall,"
            f" {result['in_sync_graph_cpu_s']} s CPU,"
            f" for {result['updates_to_in_sync']} updates",
        ),
        (
            "  wall incl. generator",
            f"{result['in_sync_wall_s']} s"
            f" (generator {result['generator_s']} s,"
            f" cyclic GC {result['gc_s_to_in_sync']} s)",
        ),
        (
            "snapshot messages",
            f"{result['snapshot_messages']} to the measured node;"
            f" {result['messages_to_all_subscribers']} to"
            f" {result['subscribed_nodes']} subscribed nodes",
        ),
        (
            "late subscriber snapshot",
            f"{result['late_subscriber_snapshot_s']} s,"
            f" {result['late_subscriber_messages']} messages",
        ),
        (
            "label change -> stream",
            f"median {result['change_latency_ms_median']} ms,"
            f" p99 {result['change_latency_ms_p99']} ms"
            f" ({result['changes']} changes)",
        ),
        ("sustained updates/s", str(result["updates_per_s"])),
        ("peak RSS", f"{result['peak_rss_mib']} MiB"),
    ]
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
