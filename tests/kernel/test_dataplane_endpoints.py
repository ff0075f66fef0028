"""The driver on one node namespace: in-sync gating and the sweep, workload interface set-up,
conntrack cleanup, and IPIP (skipped where the kernel has no ipip module)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.netns import Topology, run
from services.dataplane import messages as m
from services.policy import examples as ex
from tests.kernel.test_dataplane_vxlan import KNS, Node, ping, pod, start_node, wep

pytestmark = pytest.mark.kernel

NODE_IP = "10.91.0.1"


@pytest.fixture
def node(topology: Topology, tmp_path: Path) -> Iterator[tuple[Topology, Node]]:
    topology.add_segment("ul", "10.91.0.0/24")
    topology.add_host("node-1", address=f"{NODE_IP}/24")
    n = start_node(topology, "node-1", "iptables", "nft", tmp_path)
    try:
        yield topology, n
    finally:
        n.stop()


def base() -> list[fb.ToDataplane]:
    return [m.config(), m.pool("p", "10.244.0.0/16", masquerade=True),
            ex.host("node-1", ipv4=NODE_IP),
            ex.profile(KNS, inbound=[ex.rule("allow")], outbound=[ex.rule("allow")])]


def test_nothing_deleted_before_in_sync_then_swept(node: tuple[Topology, Node]) -> None:
    topo, n = node
    ns = n.netns
    # Leftovers of an earlier run: a chain and hook, a set, a route of ours; and others'.
    run(["iptables-nft", "-N", "cali-stale"], netns=ns)
    run(["iptables-nft", "-I", "INPUT", "-m", "comment", "--comment", "cali:SSSSSSSSSSSSSSSS",
         "-j", "cali-stale"], netns=ns)
    run(["iptables-nft", "-A", "INPUT", "-s", "192.0.2.7/32", "-j", "ACCEPT"], netns=ns)
    run(["ipset", "create", "cali40stale", "hash:net"], netns=ns)
    run(["ip", "route", "add", "blackhole", "10.244.99.0/26", "proto", "80"], netns=ns)
    run(["ip", "route", "add", "198.51.100.0/24", "via", "10.91.0.254"], netns=ns)
    pa, ifa = pod(topo, "node-1", "pod-a", "10.244.1.2")

    n.feed([*base(), wep(ifa, "pod-a", "10.244.1.2")])  # the snapshot, no InSync yet
    assert "cali-stale" in run(["iptables-nft-save", "-t", "filter"], netns=ns).stdout
    assert "cali-FORWARD" not in run(["iptables-nft-save", "-t", "filter"], netns=ns).stdout
    assert "cali40stale" in run(["ipset", "list", "-n"], netns=ns).stdout
    assert "10.244.99.0/26" in run(["ip", "route"], netns=ns).stdout

    n.feed([m.in_sync()])
    saved = run(["iptables-nft-save", "-t", "filter"], netns=ns).stdout
    assert "cali-stale" not in saved and "SSSSSSSSSSSSSSSS" not in saved
    assert "192.0.2.7" in saved and "cali-FORWARD" in saved
    sets = run(["ipset", "list", "-n"], netns=ns).stdout.split()
    assert "cali40stale" not in sets and "cali40masq-ipam-pools" in sets
    routes = run(["ip", "route"], netns=ns).stdout
    assert "10.244.99.0/26" not in routes and "198.51.100.0/24" in routes
    assert f"10.244.1.2 dev {ifa}" in routes
    assert ping(pa, NODE_IP) is False  # cali-wl-to-host: DefaultEndpointToHostAction DROP


def test_workload_interface_sysctls_and_conntrack_cleanup(node: tuple[Topology, Node]) -> None:
    topo, n = node
    ns = n.netns
    pa, ifa = pod(topo, "node-1", "pod-a", "10.244.1.2")
    pb, ifb = pod(topo, "node-1", "pod-b", "10.244.1.3")
    run(["sysctl", "-qw", f"net.ipv4.conf.{ifa}.proxy_arp=0"], netns=ns)  # undo the CNI's
    n.feed([*base(), wep(ifa, "pod-a", "10.244.1.2"), wep(ifb, "pod-b", "10.244.1.3"),
            m.in_sync()])
    proxy = run(["cat", f"/proc/sys/net/ipv4/conf/{ifa}/proxy_arp"], netns=ns).stdout.strip()
    assert proxy == "1"

    # A UDP flow from pod-a to pod-b leaves conntrack state on the node.
    listener = subprocess.Popen(["ip", "netns", "exec", pb, "sleep", "30"])
    try:
        run(["sh", "-c", "echo x > /dev/udp/10.244.1.3/9999 || true"], netns=pa, check=False)
        run(["ping", "-c", "1", "-W", "1", "10.244.1.3"], netns=pa, check=False)
        flows = run(["conntrack", "-L", "--orig-src", "10.244.1.2"], netns=ns, check=False)
        assert "10.244.1.3" in flows.stdout
        n.feed([ex.wep_remove(ifa, "default/pod-a")])
        flows = run(["conntrack", "-L", "--orig-src", "10.244.1.2"], netns=ns, check=False)
        assert "10.244.1.3" not in flows.stdout
        assert "10.244.1.2" in n.driver.conntrack.deleted_for
    finally:
        listener.kill()
        listener.wait()


def _ipip_supported(netns: str) -> bool:
    res = run(["ip", "link", "add", "name", "tunl0", "type", "ipip"], netns=netns, check=False)
    exists = run(["ip", "link", "show", "tunl0"], netns=netns, check=False).returncode == 0
    return res.returncode == 0 or exists


def test_ipip_pods_talk_through_tunl0(topology: Topology, tmp_path: Path) -> None:
    topology.add_segment("ul", "10.92.0.0/24")
    hosts = {"node-1": "10.92.0.1", "node-2": "10.92.0.2"}
    for name, ip in hosts.items():
        topology.add_host(name, address=f"{ip}/24")
    if not _ipip_supported(topology.hosts["node-1"].netns):
        pytest.skip("this kernel has no ipip module (tunl0 cannot be created); the IPIP "
                    "manager is covered by the unit tests with the fake netlink")

    nodes = {name: start_node(topology, name, "iptables", "nft", tmp_path) for name in hosts}
    try:
        blocks = {"node-1": "10.244.1.0/26", "node-2": "10.244.2.0/26"}
        tunnels = {"node-1": "10.244.1.1", "node-2": "10.244.2.1"}
        pods = {"node-1": pod(topology, "node-1", "pod-a", "10.244.1.2"),
                "node-2": pod(topology, "node-2", "pod-b", "10.244.2.2")}
        for me, n in nodes.items():
            msgs = [m.config(IpInIpTunnelAddr=tunnels[me]), m.encap(ipip=True),
                    m.pool("p", "10.244.0.0/16", ipip="Always"),
                    ex.profile(KNS, inbound=[ex.rule("allow")], outbound=[ex.rule("allow")])]
            for other, ip in hosts.items():
                msgs.append(ex.host(other, ipv4=ip))
                msgs.append(m.local_block(blocks[other], other, ip, m.IPIP) if other == me
                            else m.remote_block(blocks[other], other, ip, m.IPIP))
            _, iface = pods[me]
            name, ip = ("pod-a", "10.244.1.2") if me == "node-1" else ("pod-b", "10.244.2.2")
            msgs += [wep(iface, name, ip), m.in_sync()]
            n.feed(msgs)
        routes = run(["ip", "route"], netns=nodes["node-1"].netns).stdout
        assert "10.244.2.0/26 via 10.92.0.2 dev tunl0 proto 80 onlink" in routes
        assert ping(pods["node-1"][0], "10.244.2.2", count=2)
    finally:
        for n in nodes.values():
            n.stop()
