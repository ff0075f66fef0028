"""CrossSubnet: encapsulate only between subnets, on lab nodes joined by a router namespace.

``calico-lab up --nodes 3 --two-subnets --mode vxlan-crosssubnet``: node-1 and node-3 share
172.30.1.0/24, node-2 sits on 172.30.2.0/24 behind the router namespace. With a pod on each
node, node-1 must send pod traffic to node-3 as it is (a plain route via node-3's address on
``eth0``) and to node-2 through the tunnel device. Shown two ways while pinging from node-1's
pod: the tunnel's tx counter (moves only for the cross-subnet pings) and a tcpdump on node-1's
``eth0`` (pod addresses in the clear to node-3; to node-2 only inside VXLAN, UDP 4789).

The same runs with ``ipip-crosssubnet`` and ``tunl0`` where the kernel has IPIP; otherwise it
skips, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libcalico.netns import have_root, run
from tests.kernel.test_bgp_lab import Lab, block_of, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

PINGS = 10
NODE_ADDR = {"node-1": "172.30.1.1", "node-2": "172.30.2.2", "node-3": "172.30.1.3"}
TUNNELS = {"vxlan-crosssubnet": "vxlan.calico", "ipip-crosssubnet": "tunl0"}
# A packet line of tcpdump starts with its time; an encapsulated packet's inner header
# follows on the same line (IPIP) or on the next (VXLAN).
_PACKET = re.compile(r"^\d\d:\d\d:\d\d\.\d+ ")


def _kernel_has_ipip() -> bool:
    scratch = f"ipipchk{os.getpid()}"
    run(["ip", "netns", "add", scratch])
    try:
        return run(["ip", "-n", scratch, "link", "add", "t0", "type", "ipip"],
                   check=False).returncode == 0
    finally:
        run(["ip", "netns", "delete", scratch], check=False)


@dataclass
class ModeLab:
    lab: Lab
    mode: str

    @property
    def tunnel(self) -> str:
        return TUNNELS[self.mode]


@pytest.fixture(params=list(TUNNELS))
def xlab(request: pytest.FixtureRequest) -> Iterator[ModeLab]:
    """Three nodes on two subnets with a pod each, in the mode of the parameter; brought down
    with ``--purge`` whatever happens."""
    if not have_root():
        pytest.skip("lab nodes need root to create network namespaces")
    if shutil.which("etcd") is None or shutil.which("tcpdump") is None:
        pytest.skip("etcd and tcpdump are needed; run scripts/setup.sh")
    mode = request.param
    if mode.startswith("ipip") and not _kernel_has_ipip():
        pytest.skip("this kernel has no IPIP (`ip link add type ipip` fails in a fresh "
                    "namespace; the ipip module is not available), so IPIP CrossSubnet "
                    "cannot be shown here")
    lab = Lab(Path(tempfile.mkdtemp(prefix="xsub-lab-", dir="/tmp")))
    try:
        lab.cli("up", "--nodes", "3", "--two-subnets", "--mode", mode)
        for i in (1, 2, 3):
            lab.cli("pod", "add", f"node-{i}", f"default/p{i}")
        yield ModeLab(lab, mode)
    finally:
        lab.cli("down", "--purge", check=False)
        shutil.rmtree(lab.root, ignore_errors=True)


def tx_packets(netns: str, dev: str) -> int:
    link = json.loads(run(["ip", "-n", netns, "-s", "-j", "link", "show", dev]).stdout)[0]
    return int(link["stats64"]["tx"]["packets"])


def ping(lab: Lab, src: str, dst_ip: str) -> None:
    ns, name = src.split("/")
    pod_netns = json.loads((lab.root / "pods" / ns / f"{name}.json").read_text())["netns"]
    out = run(["ping", "-c", str(PINGS), "-i", "0.02", "-W", "2", "-q", dst_ip], netns=pod_netns,
              check=False).stdout
    assert f"{PINGS} received" in out, out


class Capture:
    """tcpdump on a device of a node namespace, from when it listens until ``stop``."""

    def __init__(self, netns: str, dev: str, expr: str, tmp: Path) -> None:
        self.out = tmp / "tcpdump.out"
        self.err = tmp / "tcpdump.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, "tcpdump", "-i", dev, "-n", "-l", "-U", expr],
                stdout=out, stderr=err)
        wait_for(lambda: "listening on" in self.err.read_text() or self.proc.poll() is not None,
                 "tcpdump to listen", 10)
        assert self.proc.poll() is None, self.err.read_text()

    def stop(self) -> list[str]:
        """One string per captured packet (outer and inner headers joined)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        packets: list[str] = []
        for line in self.out.read_text().splitlines():
            if _PACKET.match(line) or not packets:
                packets.append(line)
            else:
                packets[-1] += " | " + line.strip()
        return packets


def outer_hosts(packet: str) -> frozenset[str]:
    """Source and destination address of a tcpdump packet's outer header (ports dropped)."""
    m = re.match(r"^\S+ IP (\S+?) > (\S+?):", packet)
    if not m:
        return frozenset()
    return frozenset(a if a.count(".") == 3 else a.rsplit(".", 1)[0] for a in (m[1], m[2]))


def test_same_subnet_goes_plain_and_cross_subnet_goes_through_the_tunnel(
    xlab: ModeLab, tmp_path: Path,
) -> None:
    lab, tunnel = xlab.lab, xlab.tunnel
    node1 = lab.netns("node-1")
    p1, p2, p3 = (lab.pod_ip(f"default/p{i}") for i in (1, 2, 3))

    def routes_ready() -> bool:
        table = run(["ip", "-n", node1, "route", "show"]).stdout
        return (f"{block_of(p3)} via {NODE_ADDR['node-3']} dev eth0 " in table
                and re.search(rf"^{re.escape(block_of(p2))} via \S+ dev {re.escape(tunnel)} ",
                              table, re.M) is not None)

    wait_for(routes_ready, f"node-1's routes: node-3's block on eth0, node-2's on {tunnel}")
    encap = "udp port 4789" if tunnel.startswith("vxlan") else "ip proto 4"
    capture = Capture(node1, "eth0", f"icmp or {encap}", tmp_path)
    try:
        tun0, eth0 = tx_packets(node1, tunnel), tx_packets(node1, "eth0")
        ping(lab, "default/p1", p3)  # same subnet
        tun1, eth1 = tx_packets(node1, tunnel), tx_packets(node1, "eth0")
        ping(lab, "default/p1", p2)  # across the router
        tun2, eth2 = tx_packets(node1, tunnel), tx_packets(node1, "eth0")
        # tcpdump writes each packet as it comes (-U); wait for the last replies' lines.
        wait_for(lambda: capture.out.read_text().count(f"IP {p2} > {p1}: ICMP echo reply")
                 >= PINGS, "tcpdump to print the last packets", 5)
    finally:
        packets = capture.stop()

    # Counters: the same-subnet pings left through eth0 alone, the others through the tunnel.
    assert eth1 - eth0 >= PINGS and tun1 - tun0 < PINGS, (eth0, eth1, tun0, tun1)
    assert tun2 - tun1 >= PINGS and eth2 - eth1 >= PINGS, (eth1, eth2, tun1, tun2)

    # The wire: pod-to-pod ICMP in the clear to node-3; to node-2 only inside the tunnel's
    # packets between the two nodes' addresses.
    pods_13, pods_12 = frozenset({p1, p3}), frozenset({p1, p2})
    nodes_12 = frozenset({NODE_ADDR["node-1"], NODE_ADDR["node-2"]})
    plain_13 = [p for p in packets if outer_hosts(p) == pods_13]
    other_13 = [p for p in packets if p3 in p and outer_hosts(p) != pods_13]
    plain_12 = [p for p in packets if outer_hosts(p) == pods_12]
    wrapped_12 = [p for p in packets if outer_hosts(p) == nodes_12
                  and f"IP {p1} > {p2}: ICMP echo request" in p]
    assert len(plain_13) >= 2 * PINGS, packets  # requests and replies
    assert not other_13, other_13
    assert not plain_12, plain_12
    assert len(wrapped_12) >= PINGS, packets
    if tunnel.startswith("vxlan"):
        assert all(".4789: VXLAN" in p and "vni 4096" in p for p in wrapped_12), wrapped_12

    # And connections work both ways across the router.
    assert lab.probe("default/p2", "default/p1").startswith("ok:")
    assert lab.probe("default/p3", "default/p2").startswith("ok:")
