"""Truth-table harness: nine pods on two node namespaces, a real calc graph and real drivers.

::

    scenario step ──> World ──> v3 resources (k8s policies converted, kns/ksa profiles, WEPs,
                       │         all through libcalico.model.validate) ──diff──> Update(key, value,
                       │                                                          revision, tp)
                       │        CalcGraph (in-process) ──flush──> Subscriber(node-1), (node-2)
                       │                                              │ ToDataplane batches
                       │        Driver per node, on a NetnsLoop ◄─────┘ on_batch + wait_applied
                       v
                     Oracle ──> expected matrix      Prober ──> actual matrix (TCP 80/81, UDP 80,
                                                                 ICMP echo, every ordered pair)

Fixtures (module scope, so every scenario reuses one set of pods and one driver per flavor):

- ``truth_pods``: underlay + node-1 and node-2 + nine pod namespaces plumbed by the CNI's own
  ``setup_pod_network``, and one ``Prober``: a thread with an event loop that serves TCP 80/81
  and UDP 80/81 in every pod (sockets created inside each pod's namespace) and probes. Every
  namespace is deleted afterwards, pass or fail.
- ``truth_cluster`` (parametrised ``iptables``, ``nftables``): a fresh ``CalcGraph``, one
  subscriber and one real ``Driver`` per node for that flavor, fed the base world. Stopping it
  leaves the kernel state for the next flavor's driver to sweep after its InSync.

Example::

    def test_x(truth_cluster):
        world = base_world()
        truth_cluster.converge(world)
        actual = truth_cluster.probe(Oracle(world).matrix(PAIRS))

Skips (never fails) without root or without ``ip``/``nft``/``iptables-nft``/``ipset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from libcalico import keys
from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.client.syncer import SyncStatus, Update
from libcalico.cni import plumbing
from libcalico.model import k8s_network_policy_to_calico, namespace_profile, validate, wep_name
from libcalico.netns import Topology, have_root, run
from services.calc_graph.fanout import Subscriber
from services.calc_graph.graph import CalcGraph, build_graph
from services.dataplane.commands import ExecRunner
from services.dataplane.driver import Driver, DriverSettings
from services.dataplane.flavors import build_driver
from services.dataplane.netns_loop import NetnsLoop
from services.dataplane.status import ListSink
from services.dataplane.stream import QueueSource

from .oracle import CALICO_API, Pod, World
from .scenarios import NODES, POD_IPS, POD_KEYS, POOL, UNDERLAY, base_world

T = TypeVar("T")

FLAVORS = ("iptables", "nftables")
# The iptables flavor's backend; CALICO_TRUTH_IPTABLES_BACKEND=legacy runs it on iptables-legacy.
IPTABLES_BACKEND = os.environ.get("CALICO_TRUTH_IPTABLES_BACKEND", "nft")
PAIRS = tuple((s, d) for s in POD_KEYS for d in POD_KEYS if s != d)
CONCURRENCY = 128  # probes in flight at once
FIRST_TIMEOUT = 0.5  # seconds; a probe the oracle expects to fail costs this once
RETRY_TIMEOUTS = (1.5, 3.0)  # unexpected failures are re-probed before they count
CONVERGE_TIMEOUT = 30.0
TOOLS = ("ip", "nft", f"iptables-{IPTABLES_BACKEND}", f"iptables-{IPTABLES_BACKEND}-restore",
         "ipset", "conntrack")

# Source ports (ICMP: echo identifiers) handed out in turn per pod and protocol.
SOURCE_PORTS = {"tcp": (20000, 60000), "udp": (20000, 60000), "icmp": (1000, 61000)}

Matrix = dict[tuple[str, str, str], bool]  # (source pod, destination pod, probe) -> allowed


def _skip_reason() -> str | None:
    if not have_root():
        return "truth-table tests need root to create network namespaces"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools {missing}; run scripts/setup.sh"
    return None


def _in_thread_netns(netns: str, fn: Any) -> Any:
    """Run ``fn`` on a short-lived thread inside ``netns`` (setns is per thread)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            with plumbing.in_netns(f"/var/run/netns/{netns}"):
                out["v"] = fn()
        except BaseException as exc:  # re-raised in the caller
            out["e"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out.get("v")


# -- pods and probes ------------------------------------------------------------------------


@dataclass
class PodNet:
    key: str
    netns: str
    iface: str
    ip: str
    node: str
    next_port: dict[str, int] = field(default_factory=lambda: {
        proto: lo for proto, (lo, _) in SOURCE_PORTS.items()})

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    def port(self, proto: str) -> int:
        """A source port (ICMP: echo identifier) never used before by this pod.

        Every probe is a new conntrack flow, so a verdict never rides on an entry a probe
        made under an earlier policy.
        """
        lo, hi = SOURCE_PORTS[proto]
        p = self.next_port[proto]
        self.next_port[proto] = lo + (p - lo + 1) % (hi - lo)
        return p


class Prober:
    """One event loop on its own thread: the pods' servers and every probe.

    Sockets are created inside a pod's namespace (``in_netns`` around ``socket()``; a socket
    stays in the namespace it was made in) and then driven by this loop, so one thread serves
    all nine pods and runs hundreds of probes at once.
    """

    def __init__(self, pods: Mapping[str, PodNet]) -> None:
        self.pods = pods
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="truth-prober",
                                        daemon=True)
        self._servers: list[asyncio.Task[None]] = []
        self._sockets: list[socket.socket] = []
        self.retried = 0
        self.recovered = 0

    def start(self) -> None:
        self._thread.start()
        self.run(self._serve_all())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            for t in self._servers:
                t.cancel()
            await asyncio.gather(*self._servers, return_exceptions=True)
            for s in self._sockets:
                s.close()

        with contextlib.suppress(Exception):
            self.run(stop(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    @staticmethod
    def _socket(pod: PodNet, kind: int, proto: int = 0) -> socket.socket:
        with plumbing.in_netns(pod.path):
            s = socket.socket(socket.AF_INET, kind, proto)
        s.setblocking(False)
        return s

    # -- servers ---------------------------------------------------------------------------

    async def _serve_all(self) -> None:
        for pod in self.pods.values():
            for port in (80, 81):
                tcp = self._socket(pod, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind(("0.0.0.0", port))
                tcp.listen(512)
                udp = self._socket(pod, socket.SOCK_DGRAM)
                udp.bind(("0.0.0.0", port))
                self._sockets += [tcp, udp]
                self._servers.append(self.loop.create_task(self._tcp_server(tcp)))
                self._servers.append(self.loop.create_task(self._udp_server(udp)))

    async def _tcp_server(self, lsock: socket.socket) -> None:
        while True:
            try:
                conn, _ = await self.loop.sock_accept(lsock)
            except OSError:
                continue
            conn.close()

    async def _udp_server(self, sock: socket.socket) -> None:
        while True:
            try:
                data, addr = await self.loop.sock_recvfrom(sock, 512)
                await self.loop.sock_sendto(sock, data, addr)
            except OSError:
                continue

    # -- probes ----------------------------------------------------------------------------

    async def _tcp(self, src: PodNet, dst_ip: str, port: int, timeout: float) -> bool:
        s = self._socket(src, socket.SOCK_STREAM)
        try:
            s.bind((src.ip, src.port("tcp")))
            await asyncio.wait_for(self.loop.sock_connect(s, (dst_ip, port)), timeout)
            return True
        except (TimeoutError, OSError):
            return False
        finally:
            # RST instead of FIN: no TIME_WAIT in the pod, the flow leaves conntrack quickly.
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    async def _udp(self, src: PodNet, dst_ip: str, port: int, timeout: float) -> bool:
        s = self._socket(src, socket.SOCK_DGRAM)
        try:
            s.bind((src.ip, src.port("udp")))
            s.connect((dst_ip, port))
            payload = f"probe {src.key}".encode()
            await self.loop.sock_sendall(s, payload)
            reply = await asyncio.wait_for(self.loop.sock_recv(s, 512), timeout)
            return reply == payload
        except (TimeoutError, OSError):
            return False
        finally:
            s.close()

    async def _icmp(self, src: PodNet, dst_ip: str, timeout: float) -> bool:
        # An unprivileged ICMP socket: the kernel keys replies on the identifier (the bound
        # "port") and fills in the checksum; ping_group_range is opened in each pod.
        s = self._socket(src, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        try:
            ident = src.port("icmp")
            s.bind((src.ip, ident))
            s.connect((dst_ip, 0))
            await self.loop.sock_sendall(s, struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"truth")
            while True:
                reply = await asyncio.wait_for(self.loop.sock_recv(s, 512), timeout)
                if reply[:1] == b"\x00":  # echo reply
                    return True
        except (TimeoutError, OSError):
            return False
        finally:
            s.close()

    async def _probe(self, sem: asyncio.Semaphore, src: str, dst: str, probe: str,
                     timeout: float) -> bool:
        s, ip = self.pods[src], POD_IPS[dst]
        async with sem:
            if probe == "icmp":
                return await self._icmp(s, ip, timeout)
            proto, port = probe.split("/")
            if proto == "tcp":
                return await self._tcp(s, ip, int(port), timeout)
            return await self._udp(s, ip, int(port), timeout)

    async def _probe_many(self, keys_: list[tuple[str, str, str]], timeout: float) -> Matrix:
        sem = asyncio.Semaphore(CONCURRENCY)
        results = await asyncio.gather(*(self._probe(sem, s, d, p, timeout)
                                         for s, d, p in keys_))
        return dict(zip(keys_, results, strict=True))

    def probe(self, expected: Matrix) -> Matrix:
        """Probe every key of ``expected`` in parallel; a probe that fails where the oracle
        expects success is retried with longer timeouts before it counts (a loaded machine can
        be slow to answer; a probe that gets through is never retried)."""
        actual = self.run(self._probe_many(list(expected), FIRST_TIMEOUT))
        for timeout in RETRY_TIMEOUTS:
            again = [k for k, ok in actual.items() if expected[k] and not ok]
            if not again:
                break
            self.retried += len(again)
            redo = self.run(self._probe_many(again, timeout))
            self.recovered += sum(redo.values())
            actual.update(redo)
        return actual


@dataclass
class PodFarm:
    """The topology: node namespaces, pod namespaces and their veths, and the prober."""

    topology: Topology
    pods: dict[str, PodNet] = field(default_factory=dict)
    prober: Prober | None = None

    def build(self) -> None:
        topo = self.topology
        topo.add_segment("ul", UNDERLAY)
        for name, spec in NODES.items():
            topo.add_host(name, address=f"{spec.ip}/24")
        for pod in base_world().pods.values():
            self.pods[pod.key] = self._plumb(pod)
        self.prober = Prober(self.pods)
        self.prober.start()

    def _plumb(self, pod: Pod) -> PodNet:
        netns = self.topology.ns(f"{pod.namespace}-{pod.name}")
        run(["ip", "netns", "add", netns])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        # Let the prober open ICMP echo sockets (root's group) in this pod.
        run(["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"], netns=netns)
        iface = plumbing.host_veth_name(f"{pod.namespace}.{pod.name}")
        spec = plumbing.PodNetworkSpec(netns_path=f"/var/run/netns/{netns}", host_ifname=iface,
                                       addresses=[f"{pod.ip}/26"], mtu=1410)
        _in_thread_netns(self.topology.hosts[pod.node].netns,
                         lambda: plumbing.setup_pod_network(spec))
        return PodNet(pod.key, netns, iface, pod.ip, pod.node)

    def close(self) -> None:
        try:
            if self.prober is not None:
                self.prober.close()
        finally:
            self.topology.destroy()


# -- control plane: World -> v3 resources -> calc graph -------------------------------------


def _res(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None,
         labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if namespace:
        md["namespace"] = namespace
    if labels:
        md["labels"] = dict(labels)
    return {"apiVersion": CALICO_API, "kind": kind, "metadata": md, "spec": spec}


def infrastructure() -> list[dict[str, Any]]:
    """Pool and nodes: what the cluster has before any pod (VXLAN between the nodes)."""
    out = [_res("IPPool", "pool-1", {"cidr": POOL, "vxlanMode": "Always", "ipipMode": "Never",
                                     "natOutgoing": False, "blockSize": 26})]
    for name, spec in NODES.items():
        out.append(_res("Node", name, {"bgp": {"ipv4Address": f"{spec.ip}/24"},
                                       "ipv4VXLANTunnelAddr": spec.tunnel}))
    return out


def _block(cidr: str, owner: str) -> dict[str, Any]:
    return {"cidr": cidr, "affinity": f"host:{owner}", "allocations": [None] * 64,
            "unallocated": list(range(64)), "attributes": [], "deleted": False}


def workload_endpoint(pod: Pod, iface: str) -> dict[str, Any]:
    return _res("WorkloadEndpoint", wep_name(pod.node, "k8s", pod.name, "eth0"), {
        "orchestrator": "k8s", "node": pod.node, "pod": pod.name, "endpoint": "eth0",
        "interfaceName": iface, "ipNetworks": [f"{pod.ip}/32"],
        "profiles": [f"kns.{pod.namespace}", f"ksa.{pod.namespace}.{pod.service_account}"],
        "serviceAccountName": pod.service_account,
        "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in pod.ports],
    }, pod.namespace, pod.labels)


def resources(world: World, ifaces: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Every v3 resource the world implies, validated as the datastore would, by etcd key."""
    out: list[dict[str, Any]] = list(infrastructure())
    for ns, ns_labels in world.namespaces.items():
        out.append(dict(namespace_profile(ns, ns_labels)))
        sas = {p.service_account for p in world.pods.values() if p.namespace == ns}
        for sa in sorted(sas):
            out.append(_res("Profile", f"ksa.{ns}.{sa}",
                            {"labelsToApply": {"pcsa.projectcalico.org/name": sa}}))
    for pod in world.pods.values():
        out.append(workload_endpoint(pod, ifaces[pod.key]))
    for _, policy in sorted(world.k8s_policies.items()):
        out.append(dict(k8s_network_policy_to_calico(policy)))
    out.extend(world.calico.values())
    by_key: dict[str, dict[str, Any]] = {}
    for r in out:
        v: dict[str, Any] = dict(validate(r))
        md: dict[str, Any] = v["metadata"]
        by_key[keys.resource_key(v["kind"], md["name"], md.get("namespace"))] = v
    return by_key


class ControlPlane:
    """The calc graph in-process: datastore writes in, one subscriber's batches per node out."""

    def __init__(self, ifaces: Mapping[str, str]) -> None:
        self.ifaces = ifaces
        self.graph: CalcGraph = build_graph()
        self.subs = {node: Subscriber(node, "truth") for node in NODES}
        for sub in self.subs.values():
            self.graph.subscribe(sub)
        self.fed: dict[str, Any] = {}
        self.revision = 0

    def _update(self, key: str, value: Any) -> Update:
        self.revision += 1
        return Update(key, value, self.revision, "")

    def start(self, world: World) -> dict[str, list[fb.ToDataplane]]:
        updates = [self._update(keys.block_key(spec.block), _block(spec.block, node))
                   for node, spec in NODES.items()]
        self.graph.on_updates(updates)
        out = self.sync(world)
        self.graph.on_status(SyncStatus.IN_SYNC)
        self.graph.flush()
        for node, msgs in self._drain().items():
            out[node] += msgs
        return out

    def sync(self, world: World) -> dict[str, list[fb.ToDataplane]]:
        """Write the difference between what was fed and ``world``; flush; the nodes' batches."""
        want = resources(world, self.ifaces)
        updates = [self._update(k, None) for k in sorted(set(self.fed) - set(want))]
        updates += [self._update(k, v) for k, v in sorted(want.items()) if self.fed.get(k) != v]
        self.fed = want
        if updates:
            self.graph.on_updates(updates)
        self.graph.flush()
        return self._drain()

    def _drain(self) -> dict[str, list[fb.ToDataplane]]:
        return {node: [m for b in sub.drain() for m in b.messages]
                for node, sub in self.subs.items()}


# -- drivers --------------------------------------------------------------------------------


@dataclass
class NodeDriver:
    name: str
    loop: NetnsLoop
    driver: Driver
    source: QueueSource
    task: Future[None]

    @classmethod
    def start(cls, name: str, netns: str, flavor: str, tmp: Path) -> NodeDriver:
        loop = NetnsLoop(netns).start()
        source = QueueSource()

        async def make() -> Driver:
            return build_driver(
                DriverSettings(node=name, flavor=flavor, retry_min=0.05, retry_max=0.5),
                sink=ListSink(), runner=ExecRunner(), iptables_backend=IPTABLES_BACKEND,
                mtu_file=tmp / f"{name}.mtu", ipv6=False, report_interval=5.0)

        try:
            driver = loop.run(make())
            task = loop.submit(driver.run(source))
        except BaseException:
            loop.stop()
            raise
        return cls(name, loop, driver, source, task)

    async def _feed(self, msgs: list[fb.ToDataplane]) -> None:
        self.driver.on_batch(msgs)
        if self.driver.in_sync:
            await self.driver.wait_applied(timeout=CONVERGE_TIMEOUT)

    def feed(self, msgs: list[fb.ToDataplane]) -> Future[None]:
        if self.task.done():
            self.task.result()  # the driver died: raise its error
        return self.loop.submit(self._feed(msgs))

    def stop(self) -> None:
        try:
            self.loop.loop.call_soon_threadsafe(self.source.close)
            with contextlib.suppress(Exception):
                self.task.result(timeout=15)
        finally:
            self.loop.stop()


@dataclass
class Cluster:
    """One flavor's control plane and drivers over the shared pods."""

    farm: PodFarm
    flavor: str
    tmp: Path
    control: ControlPlane | None = None
    drivers: dict[str, NodeDriver] = field(default_factory=dict)
    converge_seconds: list[float] = field(default_factory=list)

    @property
    def prober(self) -> Prober:
        assert self.farm.prober is not None
        return self.farm.prober

    def start(self) -> None:
        ifaces = {k: p.iface for k, p in self.farm.pods.items()}
        self.control = ControlPlane(ifaces)
        snapshot = self.control.start(base_world())
        for name in NODES:
            self.drivers[name] = NodeDriver.start(
                name, self.farm.topology.hosts[name].netns, self.flavor, self.tmp)
        self._feed(snapshot)

    def _feed(self, batches: Mapping[str, list[fb.ToDataplane]]) -> None:
        futures = [self.drivers[n].feed(msgs) for n, msgs in batches.items() if msgs]
        for f in futures:
            f.result(CONVERGE_TIMEOUT + 5)
        for d in self.drivers.values():
            failed = d.driver.stats.last_failed_stages
            assert not failed, f"{d.name}: dataplane stages failed: {failed}"

    def converge(self, world: World) -> None:
        """Program ``world`` and return once every driver has applied it (bounded wait)."""
        assert self.control is not None
        t0 = time.perf_counter()
        self._feed(self.control.sync(world))
        self.converge_seconds.append(time.perf_counter() - t0)

    def probe(self, expected: Matrix) -> Matrix:
        return self.prober.probe(expected)

    def stop(self) -> None:
        for d in self.drivers.values():
            d.stop()
        self.drivers.clear()
        if self.converge_seconds:
            cs = sorted(self.converge_seconds)
            print(f"\n[{self.flavor}] {len(cs)} convergences: median {cs[len(cs) // 2]:.3f}s, "
                  f"max {cs[-1]:.3f}s; probes retried so far {self.prober.retried}, "
                  f"of which answered on retry {self.prober.recovered}")


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def truth_pods() -> Iterator[PodFarm]:
    """Nine pods (a, b, c in each of x, y, z) on node-1/node-2 with their servers.

    Every namespace is deleted afterwards, pass or fail."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    farm = PodFarm(Topology(prefix=f"tt{os.getpid() % 100000}"))
    try:
        farm.build()
        yield farm
    finally:
        farm.close()


@pytest.fixture(scope="module", params=FLAVORS)
def truth_cluster(request: pytest.FixtureRequest, truth_pods: PodFarm,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The calc graph and one driver per node in the given flavor, base world programmed."""
    cluster = Cluster(truth_pods, request.param, tmp_path_factory.mktemp(request.param))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
