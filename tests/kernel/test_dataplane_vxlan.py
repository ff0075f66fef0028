"""Two nodes on an underlay, a pod on each, VXLAN between them, driven by hand-built messages.

Each node runs a real ``Driver`` on a thread inside its namespace (``NetnsLoop``), fed through
``on_batch`` exactly as the Sync stream would feed it; pods are plumbed by the CNI's own
``setup_pod_network``. Everything is checked with real traffic: ping, TCP and UDP between pods
through ``vxlan.calico``, a Deny policy that stops it, natOutgoing seen from an outside host,
and a pod whose endpoint is not programmed being dropped. Parameterised over the iptables
flavor (on the legacy and nft backends) and the nftables flavor.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.cni import plumbing
from libcalico.netns import Topology, run
from services.dataplane import messages as m
from services.dataplane.commands import ExecRunner
from services.dataplane.driver import Driver, DriverSettings
from services.dataplane.flavors import build_driver
from services.dataplane.netns_loop import NetnsLoop
from services.dataplane.status import ListSink
from services.dataplane.stream import QueueSource
from services.policy import examples as ex

pytestmark = pytest.mark.kernel

NODES = {"node-1": ("10.90.0.1", "10.244.1.0/26", "10.244.1.0"),
         "node-2": ("10.90.0.2", "10.244.2.0/26", "10.244.2.0")}
OUTSIDE = "10.90.0.3"
KNS = "kns.default"


def in_thread_netns(netns: str, fn: Callable[[], object]) -> object:
    out: dict[str, object] = {}

    def target() -> None:
        try:
            with plumbing.in_netns(f"/var/run/netns/{netns}"):
                out["v"] = fn()
        except BaseException as exc:
            out["e"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]  # type: ignore[misc]
    return out.get("v")


@dataclass
class Node:
    name: str
    netns: str
    loop: NetnsLoop
    driver: Driver
    sink: ListSink
    source: QueueSource
    flavor: str
    backend: str

    def feed(self, msgs: Sequence[fb.ToDataplane], timeout: float = 30.0) -> None:
        async def go() -> None:
            self.driver.on_batch(msgs)
            if self.driver.in_sync:
                await self.driver.wait_applied(timeout=timeout)

        self.loop.run(go(), timeout=timeout + 5)

    def stop(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.source.close)
        time.sleep(0.2)
        self.loop.stop()


def start_node(topo: Topology, name: str, flavor: str, backend: str, tmp: Path) -> Node:
    netns = topo.hosts[name].netns
    loop = NetnsLoop(netns).start()
    sink = ListSink()
    source = QueueSource()

    async def make() -> Driver:
        d = build_driver(
            DriverSettings(node=name, flavor=flavor, retry_min=0.05, retry_max=0.5),
            sink=sink, runner=ExecRunner(), iptables_backend=backend,
            mtu_file=tmp / f"{name}.mtu", report_interval=1.0)
        asyncio.get_running_loop().create_task(d.run(source))
        return d

    driver = loop.run(make())
    return Node(name, netns, loop, driver, sink, source, flavor, backend)


def pod(topo: Topology, node: str, name: str, addr: str) -> tuple[str, str]:
    """A pod namespace plumbed on ``node``; returns (pod netns, host interface)."""
    ns = topo.ns(name)
    run(["ip", "netns", "add", ns])
    iface = plumbing.host_veth_name(f"default.{name}")
    spec = plumbing.PodNetworkSpec(netns_path=f"/var/run/netns/{ns}", host_ifname=iface,
                                   addresses=[f"{addr}/26"], mtu=1450)
    in_thread_netns(topo.hosts[node].netns, lambda: plumbing.setup_pod_network(spec))
    return ns, iface


def wep(iface: str, pod_name: str, ip: str, tiers: Sequence[fb.TierInfo] = ()) -> fb.ToDataplane:
    return ex.wep(iface, f"default/{pod_name}", ipv4=[f"{ip}/32"], profiles=[KNS], tiers=tiers)


def snapshot(me: str) -> list[fb.ToDataplane]:
    msgs = [
        m.config(),
        m.encap(vxlan=True),
        m.pool("pool-1", "10.244.0.0/16", vxlan="Always", masquerade=True),
        ex.profile(KNS, inbound=[ex.rule("allow")], outbound=[ex.rule("allow")]),
    ]
    for node, (ip, _block, tun) in NODES.items():
        msgs.append(ex.host(node, ipv4=ip))
        msgs.append(m.vtep(node, tun, ip))
    for node, (ip, block, _) in NODES.items():
        msgs.append(m.local_block(block, node, ip) if node == me
                    else m.remote_block(block, node, ip))
    return msgs


def ping(netns: str, ip: str, count: int = 1, wait: int = 2) -> bool:
    res = run(["ping", "-c", str(count), "-W", str(wait), ip], netns=netns, check=False)
    return res.returncode == 0


SERVER = r"""
import socket, sys, threading
kind, port = sys.argv[1], int(sys.argv[2])
if kind == "tcp":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(8)
    print("ready", flush=True)
    while True:
        c, a = s.accept(); c.sendall(f"{a[0]}\n".encode()); c.close()
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        d, a = s.recvfrom(100); s.sendto(f"{a[0]}\n".encode(), a)
"""

CLIENT = r"""
import socket, sys
kind, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "tcp":
    s = socket.create_connection((ip, port), timeout=2); print(s.recv(100).decode().strip())
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(b"x", (ip, port)); print(s.recvfrom(100)[0].decode().strip())
"""


def serve(netns: str, kind: str, port: int) -> subprocess.Popen[str]:
    import sys

    p = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVER, kind,
                          str(port)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def connect(netns: str, kind: str, ip: str, port: int) -> str | None:
    import sys

    res = run([sys.executable, "-c", CLIENT, kind, ip, str(port)], netns=netns, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


FLAVORS = [("iptables", "legacy"), ("iptables", "nft"), ("nftables", "nft")]


@pytest.fixture(params=FLAVORS, ids=["iptables-legacy", "iptables-nft", "nftables"])
def cluster(request: pytest.FixtureRequest, topology: Topology,
            tmp_path: Path) -> Iterator[tuple[Topology, dict[str, Node]]]:
    flavor, backend = request.param
    topology.add_segment("ul", "10.90.0.0/24")
    for name, (ip, _, _) in NODES.items():
        topology.add_host(name, address=f"{ip}/24")
    topology.add_host("outside", address=f"{OUTSIDE}/24")
    nodes: dict[str, Node] = {}
    try:
        for name in NODES:
            nodes[name] = start_node(topology, name, flavor, backend, tmp_path)
        yield topology, nodes
    finally:
        for n in nodes.values():
            n.stop()


def test_pods_on_two_nodes_talk_through_vxlan_and_policy_applies(
    cluster: tuple[Topology, dict[str, Node]], tmp_path: Path
) -> None:
    topo, nodes = cluster
    n1, n2 = nodes["node-1"], nodes["node-2"]
    pa, ifa = pod(topo, "node-1", "pod-a", "10.244.1.2")
    pb, ifb = pod(topo, "node-2", "pod-b", "10.244.2.2")
    n1.feed([*snapshot("node-1"), wep(ifa, "pod-a", "10.244.1.2"), m.in_sync()])
    n2.feed([*snapshot("node-2"), wep(ifb, "pod-b", "10.244.2.2"), m.in_sync()])

    # The kernel state the messages describe.
    routes = run(["ip", "-n", n1.netns, "route"]).stdout
    assert "10.244.2.0/26 via 10.244.2.0 dev vxlan.calico proto 80 onlink" in routes
    assert "blackhole 10.244.1.0/26 proto 80" in routes
    link = run(["ip", "-d", "-n", n1.netns, "link", "show", "vxlan.calico"]).stdout
    assert "vxlan id 4096" in link and "dstport 4789" in link and "nolearning" in link
    assert m.vtep_mac("node-1") in link
    fdb = run(["bridge", "-n", n1.netns, "fdb", "show", "dev", "vxlan.calico"]).stdout
    assert f"{m.vtep_mac('node-2')} dst 10.90.0.2 self permanent" in fdb
    assert (tmp_path / "node-1.mtu").read_text().strip() == "1450"
    assert n1.sink.in_sync_reported
    assert n1.sink.endpoint_statuses() == {"default/pod-a": "up"}

    assert ping(pa, "10.244.2.2", count=2)
    with_servers = [serve(pb, "tcp", 8080), serve(pb, "udp", 5353)]
    try:
        assert connect(pa, "tcp", "10.244.2.2", 8080) == "10.244.1.2"
        assert connect(pa, "udp", "10.244.2.2", 5353) == "10.244.1.2"

        # A policy selecting pod-b with no allow rule: default deny for its tier.
        deny = ex.pid("deny-all", "default")
        n2.feed([ex.policy(deny, inbound=[ex.rule("deny")]),
                 wep(ifb, "pod-b", "10.244.2.2", tiers=[ex.tier("default", ingress=[deny])])])
        assert not ping(pa, "10.244.2.2", wait=1)
        assert connect(pa, "tcp", "10.244.2.2", 8080) is None

        n2.feed([wep(ifb, "pod-b", "10.244.2.2"), ex.policy_remove(deny)])
        assert ping(pa, "10.244.2.2")
        assert connect(pa, "tcp", "10.244.2.2", 8080) == "10.244.1.2"
    finally:
        for p in with_servers:
            p.kill()

    # natOutgoing: the outside host has no route to the pods and sees node-1's address.
    outside = topo.hosts["outside"].netns
    srv = serve(outside, "tcp", 9090)
    try:
        assert connect(pa, "tcp", OUTSIDE, 9090) == "10.90.0.1"
    finally:
        srv.kill()


def test_unknown_workload_is_dropped_until_programmed(
    cluster: tuple[Topology, dict[str, Node]],
) -> None:
    topo, nodes = cluster
    n1, n2 = nodes["node-1"], nodes["node-2"]
    pa, ifa = pod(topo, "node-1", "pod-a", "10.244.1.2")
    _pb, ifb = pod(topo, "node-2", "pod-b", "10.244.2.2")
    n1.feed([*snapshot("node-1"), wep(ifa, "pod-a", "10.244.1.2"), m.in_sync()])
    n2.feed([*snapshot("node-2"), wep(ifb, "pod-b", "10.244.2.2"), m.in_sync()])
    assert ping(pa, "10.244.2.2")

    # The CNI made pod-c's veth and route, but its endpoint has not reached the dataplane.
    pc, ifc = pod(topo, "node-1", "pod-c", "10.244.1.3")
    assert f"10.244.1.3 dev {ifc}" in run(["ip", "-n", n1.netns, "route"]).stdout
    assert not ping(pc, "10.244.2.2", wait=1)
    assert not ping(pc, "10.90.0.1", wait=1)  # not even the host (cali-wl-to-host)
    if n1.flavor == "iptables":
        # The drops are the dispatch chain's fail-closed rule, not a routing accident.
        saved = run([f"iptables-{n1.backend}-save", "-c", "-t", "filter"], netns=n1.netns).stdout
        drops = [ln for ln in saved.splitlines()
                 if "cali-from-wl-dispatch" in ln and "Unknown interface" in ln]
        assert drops and all(not ln.startswith("[0:0]") for ln in drops), drops
    n1.feed([wep(ifc, "pod-c", "10.244.1.3")])
    assert ping(pc, "10.244.2.2")
    assert n1.sink.endpoint_statuses()["default/pod-c"] == "up"
