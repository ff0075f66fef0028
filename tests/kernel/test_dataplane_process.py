"""``calico-dataplane`` processes on two node namespaces, fed by a real calc_graph over gRPC.

etcd, the datastore service and calc_graph run in the test (on unix sockets, which every
namespace can reach); each node runs the driver as its own process under ``ip netns exec``,
exactly as deployed. Resources go in through the datastore (pool, nodes, blocks, profile,
endpoints), so the messages are calc_graph's, not hand-built. Proven here:

- pods on the two nodes ping through VXLAN; status comes back over ``Report``
  (``DataplaneInSync``, endpoint ``up``);
- drift (a hook and a workload route removed by hand) is repaired within the short refresh;
- the driver is killed and restarted while a pod pings another: no ping is lost, and an
  endpoint deleted while it was down (its veth left behind) loses its route and chains after
  the new ``InSync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from libcalico import keys
from libcalico.client import DatastoreClient
from libcalico.client.datastore import KVOp
from libcalico.cni import plumbing
from libcalico.model.names import wep_name
from libcalico.netns import Topology, run
from libcalico.testing.datastore import short_socket_dir
from services.calc_graph.config import CalcGraphConfig
from services.calc_graph.main import CalcGraphService
from services.calc_graph.testing import running_calc_graph
from tests.kernel.test_dataplane_vxlan import in_thread_netns

pytestmark = pytest.mark.kernel

NODES = {"node-1": ("10.90.0.1", "10.244.1.0/26", "10.244.1.0"),
         "node-2": ("10.90.0.2", "10.244.2.0/26", "10.244.2.0")}
DRIVER = shutil.which("calico-dataplane") or str(Path(sys.executable).parent /
                                                  "calico-dataplane")


def res(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if namespace:
        md["namespace"] = namespace
    if labels:
        md["labels"] = labels
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": md, "spec": spec}


def block(cidr: str, owner: str) -> dict[str, Any]:
    n = 64
    return {"cidr": cidr, "affinity": f"host:{owner}", "allocations": [None] * n,
            "unallocated": list(range(n)), "attributes": [], "deleted": False}


def wep(node: str, pod: str, ip: str, iface: str) -> dict[str, Any]:
    name = wep_name(node, "k8s", pod, "eth0")
    return res("WorkloadEndpoint", name, {
        "orchestrator": "k8s", "node": node, "pod": pod, "endpoint": "eth0",
        "interfaceName": iface, "ipNetworks": [f"{ip}/32"], "profiles": ["kns.default"],
    }, "default", {"app": pod})


async def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check() is not False:
                return
        except (AssertionError, LookupError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last}")


@pytest.fixture
async def calc_graph(datastore_target: str) -> AsyncIterator[tuple[CalcGraphService, str]]:
    sock_dir = short_socket_dir("calico-dp-")
    cfg = CalcGraphConfig(listen=(f"unix://{sock_dir / 'calc_graph.sock'}",),
                          datastore=datastore_target, resync_flush_interval=0.05)
    try:
        async with running_calc_graph(cfg) as (svc, target):
            yield svc, target
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


class DriverProcess:
    def __init__(self, netns: str, node: str, target: str, log: Path, mtu: Path) -> None:
        self.netns, self.node, self.target, self.log, self.mtu = netns, node, target, log, mtu
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ,
               "CALICO_DATAPLANE_NODE_NAME": self.node,
               "CALICO_DATAPLANE_CALC_GRAPH": self.target,
               "CALICO_DATAPLANE_IPTABLES_BACKEND": "nft",
               "CALICO_DATAPLANE_IPTABLES_REFRESH_INTERVAL": "1",
               "CALICO_DATAPLANE_ROUTES_REFRESH_INTERVAL": "1",
               "CALICO_DATAPLANE_IPSETS_REFRESH_INTERVAL": "1",
               "CALICO_DATAPLANE_REPORT_INTERVAL": "1",
               "CALICO_DATAPLANE_MTU_FILE": str(self.mtu),
               "CALICO_DATAPLANE_IPV6_SUPPORT": "false"}
        out = self.log.open("ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, DRIVER], env=env,
                                     stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def pod(topo: Topology, node: str, name: str, ip: str) -> tuple[str, str]:
    ns = topo.ns(name)
    run(["ip", "netns", "add", ns])
    iface = plumbing.host_veth_name(f"default.{name}")
    spec = plumbing.PodNetworkSpec(netns_path=f"/var/run/netns/{ns}", host_ifname=iface,
                                   addresses=[f"{ip}/26"], mtu=1450)
    in_thread_netns(topo.hosts[node].netns, lambda: plumbing.setup_pod_network(spec))
    return ns, iface


def ping(netns: str, ip: str) -> bool:
    return run(["ping", "-c", "1", "-W", "1", ip], netns=netns, check=False).returncode == 0


async def make_cluster(
    topology: Topology, c: DatastoreClient
) -> tuple[str, str, str, str]:
    """Two node namespaces with pods a and c on node-1 and b on node-2, and the resources
    calc_graph needs to program them (VXLAN pool, nodes, blocks, profile, endpoints)."""
    topology.add_segment("ul", "10.90.0.0/24")
    for name, (ip, _, _) in NODES.items():
        topology.add_host(name, address=f"{ip}/24")
    pa, ifa = pod(topology, "node-1", "pod-a", "10.244.1.2")
    pc, ifc = pod(topology, "node-1", "pod-c", "10.244.1.3")
    _pb, ifb = pod(topology, "node-2", "pod-b", "10.244.2.2")

    await c.apply(res("IPPool", "pool-1", {
        "cidr": "10.244.0.0/16", "vxlanMode": "Always", "ipipMode": "Never",
        "natOutgoing": True, "blockSize": 26, "nodeSelector": "all()"}))
    for name, (ip, cidr, tun) in NODES.items():
        await c.apply(res("Node", name, {"bgp": {"ipv4Address": f"{ip}/24"},
                                         "ipv4VXLANTunnelAddr": tun}))
        await c.kv_txn([], [KVOp.put(keys.block_key(cidr), block(cidr, name)),
                            KVOp.put(keys.affinity_key(name, cidr),
                                     {"state": "confirmed", "deleted": False})])
    await c.apply(res("Profile", "kns.default", {
        "ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}],
        "labelsToApply": {"pcns.projectcalico.org/name": "default"}}))
    for node, podname, ip, iface in (("node-1", "pod-a", "10.244.1.2", ifa),
                                     ("node-1", "pod-c", "10.244.1.3", ifc),
                                     ("node-2", "pod-b", "10.244.2.2", ifb)):
        await c.apply(wep(node, podname, ip, iface))

    return pa, pc, ifa, ifc


def start_drivers(topology: Topology, target: str, tmp_path: Path) -> dict[str, DriverProcess]:
    drivers = {n: DriverProcess(topology.hosts[n].netns, n, target, tmp_path / f"{n}.log",
                                tmp_path / f"{n}.mtu") for n in NODES}
    for d in drivers.values():
        d.start()
    return drivers


def stop_drivers(drivers: dict[str, DriverProcess], tmp_path: Path) -> dict[str, int | None]:
    codes = {n: d.stop() for n, d in drivers.items()}
    for n in drivers:
        log = (tmp_path / f"{n}.log").read_text(errors="replace")
        print(f"--- {n} driver log (last 40 lines) ---\n" + "\n".join(log.splitlines()[-40:]))
    return codes


async def test_driver_processes_with_calc_graph(
    topology: Topology, calc_graph: tuple[CalcGraphService, str],
    datastore_client: DatastoreClient, tmp_path: Path,
) -> None:
    svc, target = calc_graph
    c = datastore_client
    pa, pc, ifa, ifc = await make_cluster(topology, c)
    drivers = start_drivers(topology, target, tmp_path)
    n1 = topology.hosts["node-1"].netns
    try:
        await eventually(lambda: ping(pa, "10.244.2.2") and ping(pc, "10.244.2.2"),
                         what="pods ping across nodes", timeout=30)
        status = svc.driver.status

        def reported() -> None:
            st = status.nodes["node-1"]
            assert st.dataplane_in_sync and st.process_timestamp
            assert status.endpoint_statuses("node-1") == {
                "wep:k8s/default/pod-a/eth0": "up", "wep:k8s/default/pod-c/eth0": "up"}

        await eventually(reported, what="status over Report")
        assert (tmp_path / "node-1.mtu").read_text().strip() == "1450"

        # Drift: a hook and a workload route removed by hand come back within the refresh.
        run(["iptables-nft", "-D", "FORWARD", "1"], netns=n1)
        run(["ip", "route", "del", "10.244.1.2"], netns=n1)

        def repaired() -> None:
            fwd = run(["iptables-nft", "-S", "FORWARD"], netns=n1).stdout.splitlines()
            assert "cali-FORWARD" in fwd[1]
            assert f"10.244.1.2 dev {ifa}" in run(["ip", "route"], netns=n1).stdout

        started = time.monotonic()
        await eventually(repaired, timeout=10, what="drift repaired")
        assert time.monotonic() - started < 5

        # Kill node-1's driver mid-ping; pod-c's endpoint is deleted while it is down.
        pinger = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", pa, "ping", "-i", "0.05", "-c", "120", "-W", "1",
            "10.244.2.2", stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)
        drivers["node-1"].kill()
        await c.delete("WorkloadEndpoint", wep_name("node-1", "k8s", "pod-c", "eth0"), "default")
        await asyncio.sleep(1.0)
        assert f"10.244.1.3 dev {ifc}" in run(["ip", "route"], netns=n1).stdout  # nobody swept
        drivers["node-1"].start()
        raw, _ = await asyncio.wait_for(pinger.communicate(), 60)
        out = raw.decode()
        assert " 0% packet loss" in out, out

        def swept() -> None:
            assert f"10.244.1.3 dev {ifc}" not in run(["ip", "route"], netns=n1).stdout
            rules = run(["iptables-nft-save", "-t", "filter"], netns=n1).stdout
            assert f"cali-tw-{ifc}" not in rules and f"cali-tw-{ifa}" in rules

        await eventually(swept, what="pod-c cleaned up after the new InSync")
        assert ping(pa, "10.244.2.2")
        assert not ping(pc, "10.244.2.2")  # its veth is unknown again: fail-closed
    finally:
        codes = stop_drivers(drivers, tmp_path)
    assert codes == {"node-1": 0, "node-2": 0}


async def test_calc_graph_restart_loses_no_ping(
    topology: Topology, datastore_target: str, datastore_client: DatastoreClient,
    tmp_path: Path,
) -> None:
    """calc_graph stops mid-ping and a new one starts on the same socket: the drivers keep the
    kernel as it is while the stream is down, resync from the new snapshot, and no ping of a
    continuous run is lost."""
    pa, _pc, _ifa, _ifc = await make_cluster(topology, datastore_client)
    sock_dir = short_socket_dir("calico-dp-")
    cfg = CalcGraphConfig(listen=(f"unix://{sock_dir / 'calc_graph.sock'}",),
                          datastore=datastore_target, resync_flush_interval=0.05)
    drivers: dict[str, DriverProcess] = {}
    try:
        async with running_calc_graph(cfg) as (_first, target):
            drivers = start_drivers(topology, target, tmp_path)
            await eventually(lambda: ping(pa, "10.244.2.2"), what="pods ping", timeout=30)
            pinger = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", pa, "ping", "-i", "0.05", "-c", "120", "-W", "1",
                "10.244.2.2", stdout=asyncio.subprocess.PIPE)
            await asyncio.sleep(0.5)
        # calc_graph is gone now; the outage lasts a deliberate second before the restart.
        await asyncio.sleep(1.0)
        async with running_calc_graph(cfg) as (second, _target):
            def resynced() -> None:
                for node in NODES:
                    assert second.driver.status.nodes[node].dataplane_in_sync

            await eventually(resynced, what="both drivers in sync with the new calc_graph")
            raw, _ = await asyncio.wait_for(pinger.communicate(), 60)
            out = raw.decode()
            assert " 0% packet loss" in out, out
            assert ping(pa, "10.244.2.2")
    finally:
        codes = stop_drivers(drivers, tmp_path)
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert codes == {"node-1": 0, "node-2": 0}


async def test_example_driver_follows_the_contract(
    calc_graph: tuple[CalcGraphService, str], datastore_client: DatastoreClient,
) -> None:
    """The documented skeleton: logs the stream, reports in-sync and endpoint status."""
    from services.dataplane import example_driver

    svc, target = calc_graph
    await datastore_client.apply(res("Profile", "kns.default", {
        "ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}))
    await datastore_client.apply(wep("node-1", "pod-a", "10.244.1.2", "cali0123456789a"))
    task = asyncio.create_task(example_driver.run(target, "node-1"))
    try:
        def reported() -> None:
            st = svc.driver.status.nodes["node-1"]
            assert st.dataplane_in_sync and st.process_timestamp
            assert svc.driver.status.endpoint_statuses("node-1") == {
                "wep:k8s/default/pod-a/eth0": "up"}

        await eventually(reported, what="the example driver's reports")
        await datastore_client.delete("WorkloadEndpoint",
                                      wep_name("node-1", "k8s", "pod-a", "eth0"), "default")
        await eventually(lambda: svc.driver.status.endpoint_statuses("node-1") == {},
                         what="the endpoint's status removed")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
