"""BGP: from a new block affinity on one node to the route in the other nodes' kernels.

    sudo python bench/bgp.py [--mesh 10] [--rr-nodes 30] [--reflectors 2] [--blocks 8]
                             [--json]

Two clusters, one after the other, each on a control plane of its own (etcd, datastore,
ipam, calc_graph as the lab runs them, on a private state dir):

- **mesh**: ``--mesh`` nodes, the default node-to-node mesh (n-1 sessions per node);
- **rr**: ``--rr-nodes`` nodes of which ``--reflectors`` are route reflectors (cluster ID
  1.1.1.1, label ``route-reflector: "true"``), mesh off and one BGPPeer ``nodeSelector:
  all()``, ``peerSelector: route-reflector == "true"`` -- the seed walkthrough's shape.

Each node is a network namespace on one L2 underlay bridge running ``calico-bgp`` (the real
process: calc_graph's BGPSync over gRPC, BIRD config rendered, checked, reloaded) with its
BIRD, and an ``ip monitor route`` that timestamps each route as the kernel gets it. The pool
has no encapsulation, so BIRD programs the routes.

Once every session is Established, ``--blocks`` times (after one warm-up): the IPAM service
claims a new /26 for one non-reflector node (``ClaimAffinity``, block and affinity written
to etcd through the datastore's KV API as a pod's first address would), and the clock runs
from just before that RPC until the block's route reaches the kernel of every other node.
Reported per block, median and max over blocks:

- ``owner``: the owner's own BIRD has the block (its blackhole route in the owner's kernel):
  IPAM -> etcd -> datastore watch -> calc_graph -> BGPSync -> driver -> ``bird -p`` ->
  ``birdc configure``;
- ``first`` / ``all``: the route is in the first / the last other node's kernel.

Then the RSS of every BIRD and every ``calico-bgp`` (median and max per node; reflectors
apart in the rr cluster, as they hold every session). Everything started is stopped and every
namespace deleted, pass or fail.
"""

from __future__ import annotations

# Before anything loads grpc: importing libcalico picks gRPC core's I/O engine for this
# process, as in every calico-py process (libcalico.grpc_engine).
import libcalico  # noqa: F401

# isort: split
import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc.aio

from libcalico.api.ipam.v1 import ipam_pb2 as ipam_pb
from libcalico.api.ipam.v1 import ipam_pb2_grpc as ipam_grpc
from libcalico.bird_socket import BirdSocketError, peer_status
from libcalico.client import DatastoreClient
from libcalico.lab.testing import ControlPlane
from libcalico.netns import Topology, have_root

POOL_CIDR = "10.250.0.0/16"
UNDERLAY = "172.31.0.0/24"
RR_CLUSTER_ID = "1.1.1.1"
ESTABLISH_TIMEOUT_S = 180.0
ROUTE_TIMEOUT_S = 60.0


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int, comm: str) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        if ppid == pid and name == comm:
            out.append(int(stat.parent.name))
    return out


@dataclass
class BenchNode:
    name: str
    netns: str
    address: str  # without prefix length
    reflector: bool
    bird_dir: Path
    driver: asyncio.subprocess.Process | None = None
    monitor: asyncio.subprocess.Process | None = None
    seen: dict[str, float] = field(default_factory=dict)  # prefix -> first time in the kernel
    event: asyncio.Event = field(default_factory=asyncio.Event)


async def _watch_routes(node: BenchNode) -> None:
    """Timestamp every route the node's kernel gets (``ip monitor route`` flushes per line)."""
    assert node.monitor is not None and node.monitor.stdout is not None
    async for raw in node.monitor.stdout:
        now = time.monotonic()
        line = raw.decode(errors="replace")
        if line.startswith("Deleted"):
            continue
        words = line.split()
        prefix = words[1] if words and words[0] in ("blackhole", "unreachable") else (
            words[0] if words else "")
        if "/" in prefix and prefix not in node.seen:
            node.seen[prefix] = now
            node.event.set()


async def _wait_seen(nodes: list[BenchNode], prefix: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for node in nodes:
        while prefix not in node.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{prefix} did not reach {node.name} within {timeout:.0f}s")
            node.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.event.wait(), left)


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}


async def _register(cp: ControlPlane, nodes: list[BenchNode], mesh: bool) -> None:
    async with DatastoreClient(cp.datastore, timeout=20) as ds:
        await ds.create({
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "bench-pool"},
            "spec": {"cidr": POOL_CIDR, "blockSize": 26, "ipipMode": "Never",
                     "vxlanMode": "Never", "nodeSelector": "all()"},
        })
        if not mesh:
            await ds.create({
                "apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                "metadata": {"name": "default"}, "spec": {"nodeToNodeMeshEnabled": False},
            })
            await ds.create({
                "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                "metadata": {"name": "to-reflectors"},
                "spec": {"nodeSelector": "all()",
                         "peerSelector": 'route-reflector == "true"'},
            })
        for node in nodes:
            bgp: dict[str, Any] = {"ipv4Address": f"{node.address}/24"}
            labels = {"kubernetes.io/hostname": node.name}
            if node.reflector:
                bgp["routeReflectorClusterID"] = RR_CLUSTER_ID
                labels["route-reflector"] = "true"
            await ds.create({
                "apiVersion": "projectcalico.org/v3", "kind": "Node",
                "metadata": {"name": node.name, "labels": labels},
                "spec": {"bgp": bgp},
            })


def _driver_env(cp: ControlPlane, node: BenchNode) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALICO_", "OTEL_"))}
    env.update({
        "CALICO_BGP_NODE_NAME": node.name,
        "CALICO_BGP_CALC_GRAPH": cp.layout.target("calc_graph"),
        "CALICO_BGP_BIRD_DIR": str(node.bird_dir),
        "CALICO_BGP_LISTEN": f"unix://{node.bird_dir / 'driver.sock'}",
        "CALICO_BGP_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    })
    return env


async def _sessions_up(node: BenchNode, expected: int) -> bool:
    try:
        peers = await peer_status(str(node.bird_dir / "bird.ctl"))
    except BirdSocketError:
        return False
    return len(peers) == expected and all(p.info.startswith("Established") for p in peers)


async def _measure(cp: ControlPlane, nodes: list[BenchNode], blocks: int,
                   mesh: bool) -> dict[str, Any]:
    await _register(cp, nodes, mesh)
    n_rr = sum(n.reflector for n in nodes)
    expected = {n.name: (len(nodes) - 1 if mesh or n.reflector else n_rr) for n in nodes}
    watchers = []
    t_start = time.monotonic()
    for node in nodes:
        node.bird_dir.mkdir(parents=True, exist_ok=True)
        node.monitor = await asyncio.create_subprocess_exec(
            "ip", "-n", node.netns, "monitor", "route", stdout=subprocess.PIPE)
        watchers.append(asyncio.create_task(_watch_routes(node)))
        log = os.open(node.bird_dir / "driver.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o644)
        try:
            node.driver = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", node.netns, _bin("calico-bgp"),
                env=_driver_env(cp, node), stdout=log, stderr=log)
        finally:
            os.close(log)
    try:
        deadline = time.monotonic() + ESTABLISH_TIMEOUT_S
        pending = list(nodes)
        while pending:
            results = await asyncio.gather(*(_sessions_up(n, expected[n.name])
                                             for n in pending))
            pending = [n for n, ok in zip(pending, results, strict=True) if not ok]
            for n in nodes:
                if n.driver is not None and n.driver.returncode is not None:
                    raise RuntimeError(f"calico-bgp of {n.name} exited; see "
                                       f"{n.bird_dir / 'driver.log'}")
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"sessions not Established within {ESTABLISH_TIMEOUT_S:.0f}s"
                                   f" on {', '.join(n.name for n in pending[:5])}")
            if pending:
                await asyncio.sleep(0.2)
        established_s = time.monotonic() - t_start

        owners = [n for n in nodes if not n.reflector]
        samples: list[dict[str, float]] = []
        async with grpc.aio.insecure_channel(cp.ipam) as channel:
            ipam = ipam_grpc.IPAMStub(channel)
            for i in range(blocks + 1):  # the first is a warm-up
                owner = owners[i % len(owners)]
                cidr = f"10.250.{i + 1}.0/26"
                others = [n for n in nodes if n is not owner]
                t0 = time.monotonic()
                resp = await ipam.ClaimAffinity(
                    ipam_pb.ClaimAffinityRequest(cidr=cidr, node=owner.name), timeout=30)
                if list(resp.claimed) != [cidr]:
                    raise RuntimeError(f"ClaimAffinity {cidr} for {owner.name}: {resp}")
                await _wait_seen([owner, *others], cidr, ROUTE_TIMEOUT_S)
                times = sorted(n.seen[cidr] - t0 for n in others)
                if i:
                    samples.append({"owner": (owner.seen[cidr] - t0) * 1000,
                                    "first": times[0] * 1000, "all": times[-1] * 1000})

        rss: dict[str, list[int]] = {"bird": [], "driver": [], "bird_rr": [], "driver_rr": []}
        for node in nodes:
            assert node.driver is not None
            birds = children(node.driver.pid, "bird")
            suffix = "_rr" if node.reflector and not mesh else ""
            rss["driver" + suffix].append(rss_kb(node.driver.pid))
            rss["bird" + suffix].append(sum(rss_kb(b) for b in birds))
    finally:
        for node in nodes:
            for proc in (node.driver, node.monitor):
                if proc is not None and proc.returncode is None:
                    proc.terminate()
        for node in nodes:
            for proc in (node.driver, node.monitor):
                if proc is not None:
                    try:
                        await asyncio.wait_for(proc.wait(), 10)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    def mib(values: list[int]) -> dict[str, float]:
        return {"median": round(statistics.median(values) / 1024, 1),
                "max": round(max(values) / 1024, 1)} if values else {}

    return {
        "nodes": len(nodes),
        "reflectors": n_rr,
        "sessions_per_node": len(nodes) - 1 if mesh else n_rr,
        "sessions_per_reflector": 0 if mesh else len(nodes) - 1,
        "established_s": round(established_s, 2),
        "blocks": len(samples),
        "owner_ms": _stats([s["owner"] for s in samples]),
        "first_ms": _stats([s["first"] for s in samples]),
        "all_ms": _stats([s["all"] for s in samples]),
        "bird_rss_mib": mib(rss["bird"]),
        "driver_rss_mib": mib(rss["driver"]),
        "reflector_bird_rss_mib": mib(rss["bird_rr"]),
        "reflector_driver_rss_mib": mib(rss["driver_rr"]),
    }


@contextlib.contextmanager
def _cluster(tag: str, count: int, reflectors: int) -> Iterator[tuple[ControlPlane,
                                                                      list[BenchNode]]]:
    cp = ControlPlane(prefix=f"bgpb-{tag}-")
    topo = Topology(prefix=f"bgpb{os.getpid() % 10000}{tag}")
    try:
        topo.add_segment("ul", UNDERLAY)
        nodes = []
        for i in range(1, count + 1):
            host = topo.add_host(f"n{i}", default_via=None)
            nodes.append(BenchNode(f"node-{i}", host.netns, str(host.address.ip),
                                   i <= reflectors, cp.root / "nodes" / f"node-{i}"))
        yield cp, nodes
    finally:
        topo.destroy()
        cp.close()


def run_scenario(tag: str, count: int, reflectors: int, blocks: int) -> dict[str, Any]:
    with _cluster(tag, count, reflectors) as (cp, nodes):
        return asyncio.run(_measure(cp, nodes, blocks, mesh=reflectors == 0))


def table(result: dict[str, Any]) -> str:
    def mm(d: dict[str, float]) -> str:
        return f"{d['median']:.0f} / {d['max']:.0f}" if d else "-"

    def mb(d: dict[str, float]) -> str:
        return f"{d['median']:.1f} / {d['max']:.1f}" if d else "-"

    head = ["cluster", "nodes", "sessions", "up s", "blocks", "owner ms", "first ms", "all ms",
            "BIRD MiB", "driver MiB"]
    rows = []
    for name, r in result["scenarios"].items():
        sessions = str(r["sessions_per_node"]) + (
            f" (RR {r['sessions_per_reflector']})" if r["reflectors"] else "")
        rows.append([name, str(r["nodes"]), sessions, f"{r['established_s']:.1f}",
                     str(r["blocks"]), mm(r["owner_ms"]), mm(r["first_ms"]), mm(r["all_ms"]),
                     mb(r["bird_rss_mib"]), mb(r["driver_rss_mib"])])
        if r["reflectors"]:
            rows.append(["  reflectors", str(r["reflectors"]), "", "", "", "", "", "",
                         mb(r["reflector_bird_rss_mib"]), mb(r["reflector_driver_rss_mib"])])
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", "ms and MiB: median / max over blocks (latency) or nodes (RSS). owner: the "
              "owner's BIRD has the block; first/all: the route is in the first/last other "
              "node's kernel, from just before ClaimAffinity.",
              f"machine: {result['cpus']} CPUs, {result['bird']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mesh", type=int, default=10, help="nodes in the mesh cluster")
    parser.add_argument("--rr-nodes", type=int, default=30, help="nodes in the RR cluster")
    parser.add_argument("--reflectors", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=8, help="measured blocks per cluster")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not have_root():
        print("bench/bgp.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.mesh < 2 or args.rr_nodes <= args.reflectors or args.reflectors < 1:
        parser.error("need --mesh >= 2 and --rr-nodes > --reflectors >= 1")
    bird = subprocess.run(["bird", "--version"], capture_output=True, text=True, check=False)
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "bird": (bird.stdout + bird.stderr).strip(),
        "scenarios": {
            f"mesh {args.mesh}": run_scenario("m", args.mesh, 0, args.blocks),
            f"rr {args.rr_nodes}": run_scenario("r", args.rr_nodes, args.reflectors,
                                                args.blocks),
        },
    }
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
