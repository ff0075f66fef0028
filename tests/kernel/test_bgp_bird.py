"""Real BIRD in node namespaces: mesh, the route-reflector walkthrough, and a GoBGP top-of-rack.

Each node is a namespace on one L2 underlay running BIRD with the config our renderer writes
from a BGP view (as calc_graph would send it), plus a pod plumbed by the CNI code, so pod
traffic between nodes relies only on the routes BIRD programs.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from libcalico.bird_socket import format_node_status, peer_status
from libcalico.cni import plumbing
from libcalico.netns import Topology, run
from services.bgp.bird import BirdProcess
from services.bgp.bird_config import render
from services.bgp.view import BGPNodeInfo, BGPView, PoolInfo

pytestmark = pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 not installed")

POOL = PoolInfo("10.244.0.0/16", "Never", "Never")


def in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with plumbing.in_netns(f"/var/run/netns/{netns}"):
                box["v"] = fn()
        except BaseException as exc:
            box["e"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("v")


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Cluster:
    def __init__(self, topo: Topology, tmp: Path, n: int) -> None:
        self.topo = topo
        topo.add_segment("ul", "10.0.0.0/24")
        self.nodes: dict[str, BGPNodeInfo] = {}
        self.birds: dict[str, BirdProcess] = {}
        self.blocks: dict[str, str] = {}
        for i in range(1, n + 1):
            name = f"node-{i}"
            host = topo.add_host(name, address=f"10.0.0.{i}/24")
            self.nodes[name] = BGPNodeInfo(name, f"10.0.0.{i}", f"10.0.0.{i}/24", "", "", {})
            self.blocks[name] = f"10.244.{i}.0/26"
            self.birds[name] = BirdProcess(tmp / name, wrapper=["ip", "netns", "exec", host.netns])
        self.peers: list[dict[str, Any]] = []
        self.configs: dict[str, dict[str, Any]] = {}

    def view(self, name: str) -> BGPView:
        return BGPView(node=name, nodes=self.nodes, configurations=self.configs,
                       peers=self.peers, pools=[POOL], local_blocks=[self.blocks[name]],
                       borrowed_ips=[])

    async def apply(self) -> None:
        for name, bird in self.birds.items():
            await bird.apply(render(self.view(name)))

    def add_pod(self, node: str, ip: str) -> str:
        pod = self.topo.ns(f"pod-{node}")
        run(["ip", "netns", "add", pod])
        spec = plumbing.PodNetworkSpec(netns_path=f"/var/run/netns/{pod}",
                                       host_ifname=plumbing.host_veth_name(pod),
                                       addresses=[f"{ip}/26"])
        in_netns(self.topo.hosts[node].netns, lambda: plumbing.setup_pod_network(spec))
        return pod

    def bird_routes(self, node: str) -> str:
        netns = self.topo.hosts[node].netns
        return run(["ip", "-n", netns, "route", "show", "proto", "bird"]).stdout

    async def stop(self) -> None:
        for bird in self.birds.values():
            await bird.stop()


@pytest.fixture
async def cluster(topology: Topology, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(topology, tmp_path, 3)
    try:
        yield c
    finally:
        await c.stop()


def _all_routes_present(c: Cluster) -> bool:
    for name in c.nodes:
        routes = c.bird_routes(name)
        for other, block in c.blocks.items():
            if other != name and block not in routes:
                return False
    return True


async def test_mesh_then_route_reflector_walkthrough(cluster: Cluster) -> None:
    c = cluster
    await c.apply()
    await wait_for(lambda: _all_routes_present(c), "every node to learn every block over the mesh")
    assert "10.244.2.0/26 via 10.0.0.2" in c.bird_routes("node-1")
    pod1 = c.add_pod("node-1", "10.244.1.5")
    c.add_pod("node-2", "10.244.2.5")
    run(["ping", "-c1", "-W2", "10.244.2.5"], netns=pod1)
    status = await peer_status(str(c.birds["node-1"].socket_path))
    assert {(p.address, p.peer_type, p.info) for p in status} == {
        ("10.0.0.2", "node-to-node mesh", "Established"),
        ("10.0.0.3", "node-to-node mesh", "Established"),
    }

    # The user's walkthrough: node-1 becomes the reflector, every node peers with it, mesh off.
    c.nodes["node-1"] = BGPNodeInfo("node-1", "10.0.0.1", "10.0.0.1/24", "", "1.1.1.1",
                                    {"route-reflector": "true"})
    # One BGPPeer, as in the walkthrough: the reflector's side comes from reverse peering.
    c.peers = [{"metadata": {"name": "bgppeer-demo"},
                "spec": {"nodeSelector": "all()", "peerSelector": 'route-reflector == "true"'}}]
    c.configs = {"default": {"metadata": {"name": "default"},
                             "spec": {"nodeToNodeMeshEnabled": False, "asNumber": 64512}}}
    await c.apply()

    async def node_specific_everywhere() -> bool:
        s2 = await peer_status(str(c.birds["node-2"].socket_path))
        return [(p.address, p.peer_type, p.info) for p in s2] == [
            ("10.0.0.1", "node specific", "Established")]

    deadline = time.monotonic() + 30
    while not await node_specific_everywhere():
        assert time.monotonic() < deadline, "sessions did not turn node specific"
        await asyncio.sleep(0.3)
    await wait_for(lambda: _all_routes_present(c), "routes to survive the switch to reflectors")
    run(["ping", "-c1", "-W2", "10.244.2.5"], netns=pod1)
    table = format_node_status(await peer_status(str(c.birds["node-2"].socket_path)))
    assert "| 10.0.0.1     | node specific | up    |" in table


async def test_bird_restarts_and_unchanged_config_does_not_reload(cluster: Cluster) -> None:
    c = cluster
    await c.apply()
    bird = c.birds["node-1"]
    assert await bird.apply(render(c.view("node-1"))) is False
    assert bird.reloads == 0
    assert bird._proc is not None
    bird._proc.kill()
    await bird._proc.wait()
    assert await bird.ensure_running() is True
    await wait_for(lambda: _all_routes_present(c), "routes after BIRD restarted")


@pytest.mark.skipif(shutil.which("gobgpd") is None, reason="gobgpd not installed")
async def test_gobgp_top_of_rack_learns_every_block(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    tor = c.topo.add_host("tor", address="10.0.0.254/24", default_via=None)
    conf = tmp_path / "gobgpd.toml"
    neighbors = "".join(
        f'\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "{n.ipv4}"\n'
        f"    peer-as = 64512\n" for n in c.nodes.values())
    conf.write_text('[global.config]\n  as = 65000\n  router-id = "10.0.0.254"\n'
                    '  port = 179\n' + neighbors)
    c.peers = [{"metadata": {"name": "tor"}, "spec": {"peerIP": "10.0.0.254", "asNumber": 65000}}]
    gobgpd = c.topo.popen("tor", ["gobgpd", "-f", str(conf), "-p", "--api-hosts",
                                  "127.0.0.1:50051"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        await c.apply()

        def learned() -> bool:
            rib = c.topo.exec("tor", ["gobgp", "-u", "127.0.0.1", "-p", "50051", "global",
                                      "rib"], check=False).stdout
            return all(block in rib for block in c.blocks.values())

        await wait_for(learned, "the top-of-rack router to learn every node's block", 40)
        status = await peer_status(str(c.birds["node-1"].socket_path))
        assert ("10.0.0.254", "global") in {(p.address, p.peer_type) for p in status}
        assert tor.netns
    finally:
        gobgpd.terminate()
        gobgpd.wait(timeout=10)
