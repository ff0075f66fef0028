"""Lab nodes: a network namespace per host on underlay bridges, registered and supervised.

``create_nodes(layout, count, report, options)`` (what ``calico-lab up --nodes N`` calls, after
the control plane is healthy) brings the lab to at least ``count`` nodes, idempotently:

1. checks the mode: IPIP modes need the kernel's ``ipip`` link type, tried in a scratch
   namespace (this is the only place that would fail, so it fails first and plainly);
2. underlay: segment ``a`` (172.30.1.0/24) is a bridge ``br0`` in namespace
   ``<prefix>lab-ul-a``; with ``--two-subnets`` segment ``b`` (172.30.2.0/24) too, and a
   router namespace ``<prefix>lab-router`` with a leg .254 on each, forwarding between them.
   Nodes alternate between the segments (odd on ``a``, even on ``b``);
3. node ``node-<i>``: namespace ``<prefix>node-<i>`` with ``eth0`` 172.30.<seg>.<i>/24 on the
   segment's bridge (the veth is made inside the underlay namespace, its far end put straight
   into the node), default route via .254 (a node needs one: proxy ARP answers a pod's ARP for
   169.254.1.1 only when the node has a route), forwarding on;
4. datastore: the default IP pool ``default-ipv4-ippool`` 10.244.0.0/16 in the chosen mode
   (created when missing; an explicit ``--mode`` updates it), the ``kns.default`` namespace
   profile, and a ``Node`` per node: ``spec.bgp.ipv4Address``, ``asNumber`` only with
   ``--as-number`` (otherwise the cluster's, as calico/node does without ``AS``), labels
   ``kubernetes.io/hostname``, ``kubernetes.io/os``, ``calico-lab/subnet``, and
   ``status.podCIDRs`` 10.245.<i>.0/24 (what host-local's ``usePodCidr`` reads); then the
   node's VXLAN/IPIP tunnel address through the IPAM service, as calico/node allocates it;
5. files: the node's CNI config list and MTU file (pod MTU: 1500 minus 50 for VXLAN, 20 for
   IPIP);
6. processes, each only if not already running (so ``up`` also restarts what died): the
   agents, ``ip netns exec <node-ns> calico-dataplane`` and, in BGP and IPIP modes (Calico's
   ``bird`` backend; VXLAN modes run without BIRD), ``calico-bgp``, both in the control
   plane's process table as ``<node>.<agent>`` and only once ``calc_graph`` runs; and the
   node's pod server (``podserver``), in a process table of the node's own.

Everything made is written to ``lab-nodes.json`` *before* it is made, so ``delete_nodes``
(``calico-lab down``) finds it after any crash, and removes exactly that: the pods (CNI DEL
through the node's chain while the control plane still runs, so endpoints and addresses are
released), the processes, then the namespaces -- nodes, router, underlays. Names never
collide with another lab: the default state dir uses no prefix (``node-1``...), any other
state dir a prefix derived from its path.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import ipaddress
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libcalico.cli.lab.control_plane import LabError, Layout, read_state
from libcalico.cli.lab.processes import ProcessSpec, ProcessTable
from libcalico.netns import NetnsError, delete_netns, list_netns, run, sysctl

DEFAULT_STATE_DIR = "/run/calico-lab"
STATE_FILE = "lab-nodes.json"
SEGMENTS = {"a": "172.30.1.0/24", "b": "172.30.2.0/24"}
ROUTER_HOST = 254
POD_CIDR_BASE = ipaddress.IPv4Network("10.245.0.0/16")
POOL_NAME = "default-ipv4-ippool"
POOL_CIDR = "10.244.0.0/16"
NETWORK_NAME = "k8s-pod-network"
UNDERLAY_MTU = 1500

MODES: dict[str, tuple[str, str]] = {  # mode -> (ipipMode, vxlanMode)
    "bgp": ("Never", "Never"),
    "vxlan": ("Never", "Always"),
    "vxlan-crosssubnet": ("Never", "CrossSubnet"),
    "ipip": ("Always", "Never"),
    "ipip-crosssubnet": ("CrossSubnet", "Never"),
}
DEFAULT_MODE = "vxlan"
BIRD_MODES = frozenset({"bgp", "ipip", "ipip-crosssubnet"})
IPAM_TYPES = ("calico-ipam", "host-local")
AGENT_START_CHECK_S = 1.0
PODSERVER_READY_S = 10.0
NODE_METRICS_PORT = 9091  # the dataplane driver's, on the node's own loopback


def pod_mtu(mode: str, underlay_mtu: int = UNDERLAY_MTU) -> int:
    if mode.startswith("vxlan"):
        return underlay_mtu - 50
    if mode.startswith("ipip"):
        return underlay_mtu - 20
    return underlay_mtu


@dataclass(frozen=True)
class NodeOptions:
    """``up`` flags about nodes; None means "as before" (or the default the first time)."""

    mode: str | None = None
    two_subnets: bool | None = None
    ipam: str | None = None
    netns_prefix: str | None = None
    as_number: int | None = None


@dataclass(frozen=True)
class AgentDef:
    name: str  # process name <node>.<name>
    package: str
    console_script: str
    env_prefix: str
    wiring: Mapping[str, str]  # env field -> node setting (see _agent_env)
    modes: frozenset[str] | None = None  # only in these modes; None: all


AGENTS: tuple[AgentDef, ...] = (
    AgentDef("dataplane", "services.dataplane", "calico-dataplane", "CALICO_DATAPLANE_",
             {"NODE_NAME": "node", "CALC_GRAPH": "calc_graph", "MTU_FILE": "mtu_file",
              "ENDPOINT_STATUS_DIR": "endpoint_status_dir", "LISTEN": "listen",
              "METRICS_PORT": "metrics_port"}),
    AgentDef("bgp", "services.bgp", "calico-bgp", "CALICO_BGP_",
             {"NODE_NAME": "node", "CALC_GRAPH": "calc_graph", "BIRD_DIR": "bird_dir",
              "LISTEN": "listen"}, BIRD_MODES),
)


def default_prefix(root: Path) -> str:
    """No prefix for the default lab (``node-1``); any other state dir gets its own."""
    if str(root) == DEFAULT_STATE_DIR:
        return ""
    return "cl" + hashlib.sha1(str(root).encode()).hexdigest()[:6] + "-"


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _services(layout: Layout) -> list[str]:
    """The control-plane services ``up`` started (from its lab.json)."""
    names = read_state(layout).get("services")
    return [str(n) for n in names] if isinstance(names, list) else []


def console_argv(script: str, module: str) -> list[str]:
    path = Path(sys.executable).parent / script
    if path.exists():
        return [str(path)]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


# -- state -------------------------------------------------------------------------------------


class LabNodes:
    """The node part of one lab: its state file, paths and namespaces."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.root = layout.root
        self.state_path = self.root / STATE_FILE
        self.state: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_path)

    @property
    def exists(self) -> bool:
        return self.state_path.exists()

    @property
    def prefix(self) -> str:
        return str(self.state.get("netns_prefix", default_prefix(self.root)))

    @property
    def mode(self) -> str:
        return str(self.state.get("mode") or DEFAULT_MODE)

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        nodes = self.state.setdefault("nodes", {})
        assert isinstance(nodes, dict)
        return nodes

    def record_netns(self, netns: str) -> None:
        """Note a namespace as ours before creating it, so ``down`` finds it after a crash."""
        made = self.state.setdefault("namespaces", [])
        if netns not in made:
            made.append(netns)
            self.save()

    # -- paths ---------------------------------------------------------------------------------

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def conflist_path(self, node: str) -> Path:
        return self.node_dir(node) / "10-calico.conflist"

    def mtu_path(self, node: str) -> Path:
        return self.node_dir(node) / "mtu"

    def podserver_socket(self, node: str) -> Path:
        return self.node_dir(node) / "podserver.sock"

    def podserver_table(self, node: str) -> ProcessTable:
        return ProcessTable(self.node_dir(node))

    @property
    def pods_dir(self) -> Path:
        return self.root / "pods"

    def node_netns(self, node: str) -> str:
        info = self.nodes.get(node)
        if info is None:
            known = ", ".join(sorted(self.nodes)) or "none (calico-lab up --nodes N)"
            raise LabError(f"no lab node {node!r}; nodes: {known}")
        return str(info["netns"])

    def conflist(self, node: str) -> dict[str, Any]:
        return dict(json.loads(self.conflist_path(node).read_text()))


# -- building ----------------------------------------------------------------------------------


def check_mode(mode: str, prefix: str) -> None:
    """IPIP modes need the kernel's ipip link type: try it in a scratch namespace."""
    if mode not in MODES:
        raise LabError(f"unknown mode {mode!r}; one of: {', '.join(MODES)}")
    if not mode.startswith("ipip"):
        return
    scratch = f"{prefix}lab-scratch-{os.getpid()}"
    run(["ip", "netns", "add", scratch])
    try:
        proc = run(["ip", "-n", scratch, "link", "add", "t0", "type", "ipip", "local",
                    "192.0.2.1", "remote", "any"], check=False)
    finally:
        run(["ip", "netns", "delete", scratch], check=False)
    if proc.returncode != 0:
        raise LabError(
            f"--mode {mode}: this kernel lacks IPIP (`ip link add type ipip` failed: "
            f"{proc.stderr.strip() or 'exit ' + str(proc.returncode)}); load the ipip module "
            "or use --mode vxlan, vxlan-crosssubnet or bgp")


def _create_netns(lab: LabNodes, netns: str) -> None:
    if netns in list_netns():
        if netns in lab.state.get("namespaces", []):
            delete_netns(netns)  # a half-made one of ours from an interrupted `up`
        else:
            raise LabError(f"network namespace {netns!r} exists and is not this lab's; remove it "
                           "or use another --state-dir / --netns-prefix")
    lab.record_netns(netns)
    run(["ip", "netns", "add", netns])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])


def ensure_segment(lab: LabNodes, seg: str) -> bool:
    """The segment's bridge namespace; True when it had to be (re)made."""
    segments = lab.state.setdefault("segments", {})
    netns = f"{lab.prefix}lab-ul-{seg}"
    if seg in segments and netns in list_netns():
        return False
    _create_netns(lab, netns)
    run(["ip", "-n", netns, "link", "add", "br0", "type", "bridge"])
    run(["ip", "-n", netns, "link", "set", "br0", "up"])
    segments[seg] = {"netns": netns, "subnet": SEGMENTS[seg]}
    lab.save()
    return True


def _attach(seg_netns: str, outer: str, target_netns: str, inner: str) -> None:
    # Made inside the underlay namespace, far end placed straight into the host: the
    # machine's own namespace never sees either end.
    run(["ip", "-n", seg_netns, "link", "add", outer[:15], "mtu", str(UNDERLAY_MTU), "type",
         "veth", "peer", "name", inner, "mtu", str(UNDERLAY_MTU), "netns", target_netns])
    run(["ip", "-n", seg_netns, "link", "set", outer[:15], "master", "br0"])
    run(["ip", "-n", seg_netns, "link", "set", outer[:15], "up"])


def ensure_router(lab: LabNodes, rebuild: bool = False) -> None:
    netns = f"{lab.prefix}lab-router"
    if lab.state.get("router") and netns in list_netns() and not rebuild:
        return
    _create_netns(lab, netns)
    for i, seg in enumerate(("a", "b")):
        s = lab.state["segments"][seg]
        net = ipaddress.IPv4Network(s["subnet"])
        _attach(s["netns"], f"r-{seg}", netns, f"eth{i}")
        run(["ip", "-n", netns, "addr", "add", f"{net[ROUTER_HOST]}/{net.prefixlen}", "dev",
             f"eth{i}"])
        run(["ip", "-n", netns, "link", "set", f"eth{i}", "up"])
    sysctl(netns, "net.ipv4.ip_forward", "1")
    lab.state["router"] = netns
    lab.save()


def ensure_node(lab: LabNodes, index: int) -> tuple[str, bool]:
    node = f"node-{index}"
    netns = f"{lab.prefix}{node}"
    if node in lab.nodes and netns in list_netns():
        return node, False
    two = bool(lab.state.get("two_subnets"))
    seg = "b" if two and index % 2 == 0 else "a"
    s = lab.state["segments"][seg]
    net = ipaddress.IPv4Network(s["subnet"])
    if index >= ROUTER_HOST:
        raise LabError(f"at most {ROUTER_HOST - 1} nodes fit on a lab segment")
    address = f"{net[index]}/{net.prefixlen}"
    _create_netns(lab, netns)
    _attach(s["netns"], f"u-{node}", netns, "eth0")
    run(["ip", "-n", netns, "addr", "add", address, "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    run(["ip", "-n", netns, "route", "replace", "default", "via", str(net[ROUTER_HOST])])
    sysctl(netns, "net.ipv4.ip_forward", "1")
    pod_cidr = ipaddress.IPv4Network((int(POD_CIDR_BASE.network_address) + (index << 8), 24))
    lab.nodes[node] = {
        "index": index, "netns": netns, "segment": seg, "address": address,
        "pod_cidr": str(pod_cidr),
    }
    lab.save()
    return node, True


# -- datastore ---------------------------------------------------------------------------------


def pool_resource(mode: str) -> dict[str, Any]:
    ipip, vxlan = MODES[mode]
    return {
        "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": POOL_NAME},
        "spec": {"cidr": POOL_CIDR, "ipipMode": ipip, "vxlanMode": vxlan, "natOutgoing": True,
                 "blockSize": 26, "nodeSelector": "all()"},
    }


def node_resource(lab: LabNodes, node: str, as_number: int | None) -> dict[str, Any]:
    info = lab.nodes[node]
    bgp: dict[str, Any] = {"ipv4Address": info["address"]}
    if as_number is not None:
        bgp["asNumber"] = as_number
    return {
        "apiVersion": "projectcalico.org/v3", "kind": "Node",
        "metadata": {"name": node, "labels": {
            "kubernetes.io/hostname": node, "kubernetes.io/os": "linux",
            "calico-lab/subnet": info["segment"],
        }},
        "spec": {"bgp": bgp, "orchRefs": [{"nodeName": node, "orchestrator": "k8s"}]},
        "status": {"podCIDRs": [info["pod_cidr"]]},
    }


async def _register(lab: LabNodes, mode_explicit: bool, report: Callable[[str], None]) -> None:
    from libcalico.client import DatastoreClient
    from libcalico.errors import NotFoundError
    from libcalico.lab import namespaces

    mode = lab.mode
    async with DatastoreClient(lab.layout.target("datastore"), timeout=20) as ds:
        try:
            pool = await ds.get("IPPool", POOL_NAME)
        except NotFoundError:
            pool = None
        if pool is None:
            await ds.create(pool_resource(mode))
            report(f"ippool       {POOL_NAME} {POOL_CIDR} ({mode}) created")
        else:
            ipip, vxlan = MODES[mode]
            spec = pool.setdefault("spec", {})
            if mode_explicit and (spec.get("ipipMode", "Never"), spec.get("vxlanMode", "Never")) \
                    != (ipip, vxlan):
                spec["ipipMode"], spec["vxlanMode"] = ipip, vxlan
                await ds.update(pool)
                report(f"ippool       {POOL_NAME}: mode set to {mode}")
        await namespaces.ensure(ds, "default")
        await _felix_defaults(ds, report)
        as_number = lab.state.get("as_number")
        for node in sorted(lab.nodes, key=lambda n: lab.nodes[n]["index"]):
            desired = node_resource(lab, node, as_number if isinstance(as_number, int) else None)
            try:
                current = await ds.get("Node", node)
            except NotFoundError:
                current = None
            if current is None:
                await ds.create(desired)
                continue
            # Keep what others wrote (tunnel addresses, BGP extras); set what the lab owns.
            current["metadata"].setdefault("labels", {}).update(desired["metadata"]["labels"])
            spec = current.setdefault("spec", {})
            spec.setdefault("bgp", {}).update(desired["spec"]["bgp"])
            if as_number is None:
                spec["bgp"].pop("asNumber", None)
            spec["orchRefs"] = desired["spec"]["orchRefs"]
            current.setdefault("status", {})["podCIDRs"] = desired["status"]["podCIDRs"]
            await ds.update(current)


async def _felix_defaults(ds: Any, report: Callable[[str], None]) -> None:
    """What Calico's manifests set through calico/node's environment
    (``FELIX_DEFAULTENDPOINTTOHOSTACTION=ACCEPT``): pods may reach their own node. Felix's
    built-in default is Drop; a value already set in FelixConfiguration ``default`` wins."""
    from libcalico.errors import NotFoundError

    try:
        fc = await ds.get("FelixConfiguration", "default")
    except NotFoundError:
        fc = None
    if fc is None:
        await ds.create({
            "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
            "metadata": {"name": "default"},
            "spec": {"defaultEndpointToHostAction": "Accept"},
        })
        report("felixconfig  default: defaultEndpointToHostAction Accept (as Calico's "
               "manifests set it)")
    elif "defaultEndpointToHostAction" not in (fc.get("spec") or {}):
        fc.setdefault("spec", {})["defaultEndpointToHostAction"] = "Accept"
        await ds.update(fc)
        report("felixconfig  default: defaultEndpointToHostAction Accept (as Calico's "
               "manifests set it)")


def _tunnel_addresses(lab: LabNodes, report: Callable[[str], None]) -> None:
    """calico/node allocates the node's tunnel addresses; the lab does it for its nodes."""
    import grpc

    from libcalico.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc

    with grpc.insecure_channel(lab.layout.target("ipam")) as channel:
        stub = ipam_pb2_grpc.IPAMStub(channel)
        for node in sorted(lab.nodes, key=lambda n: lab.nodes[n]["index"]):
            got = []
            for kind, label in ((ipam_pb2.VXLAN, "vxlan"), (ipam_pb2.IPIP, "ipip")):
                try:
                    resp = stub.EnsureTunnelAddress(
                        ipam_pb2.EnsureTunnelAddressRequest(node=node, kind=kind), timeout=20)
                except grpc.RpcError as exc:
                    report(f"{node:<12} {label} tunnel address not allocated: {exc.details()}")
                    continue
                if resp.address:
                    got.append(f"{label} {resp.address}")
            lab.nodes[node]["tunnel"] = ", ".join(got)
    lab.save()


# -- files and processes -----------------------------------------------------------------------


def write_node_files(lab: LabNodes, node: str) -> None:
    d = lab.node_dir(node)
    (d / "bird").mkdir(parents=True, exist_ok=True)
    mtu = pod_mtu(lab.mode)
    # Written when missing or when the mode changed; otherwise the dataplane agent's value
    # (it measures the node's interfaces) is left alone.
    if not lab.mtu_path(node).exists() or lab.state.get("mtu_mode") != lab.mode:
        lab.mtu_path(node).write_text(f"{mtu}\n")
    ipam_type = str(lab.state.get("ipam") or "calico-ipam")
    if ipam_type == "host-local":
        ipam: dict[str, Any] = {"type": "host-local", "subnet": "usePodCidr",
                                "dataDir": str(d / "host-local")}
    else:
        ipam = {"type": "calico-ipam", "ipam_endpoint": lab.layout.target("ipam")}
    conflist = {
        "name": NETWORK_NAME,
        "cniVersion": "1.0.0",
        "plugins": [
            {
                "type": "calico",
                "nodename": node,
                "mtu": 0,
                "mtu_file": str(lab.mtu_path(node)),
                "log_level": "info",
                "log_file_path": str(lab.root / "logs" / "cni.log"),
                "datastore_type": "etcdv3",
                "datastore_endpoint": lab.layout.target("datastore"),
                "pod_metadata_dir": str(lab.pods_dir),
                # Off as in Calico; a number of seconds makes ADD wait for the dataplane.
                "policy_setup_timeout_seconds": 0,
                "endpoint_status_dir": str(d / "endpoint-status"),
                "ipam": ipam,
                "container_settings": {"allow_ip_forwarding": False},
            },
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        ],
    }
    tmp = lab.conflist_path(node).with_suffix(".tmp")
    tmp.write_text(json.dumps(conflist, indent=2) + "\n")
    tmp.replace(lab.conflist_path(node))


def _agent_env(lab: LabNodes, agent: AgentDef, node: str) -> dict[str, str]:
    values = {
        "node": node,
        "calc_graph": lab.layout.target("calc_graph"),
        "mtu_file": str(lab.mtu_path(node)),
        "endpoint_status_dir": str(lab.node_dir(node) / "endpoint-status"),
        # Prometheus /metrics on 127.0.0.1 inside the node's namespace (each node has its own).
        "metrics_port": str(NODE_METRICS_PORT),
        "bird_dir": str(lab.node_dir(node) / "bird"),
        "listen": lab.layout.target(f"{node}.{agent.name}"),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALICO_", "OTEL_"))}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "CALICO_STATE_DIR": str(lab.root),
        "CALICO_TRACE_FILE": str(lab.layout.trace_file),
    })
    for var, what in agent.wiring.items():
        env[agent.env_prefix + var] = values[what]
    return env


def start_agents(lab: LabNodes, node: str) -> list[str]:
    """Start the node's agents that are not running; returns one phrase per agent."""
    table = ProcessTable(lab.root)
    services = _services(lab.layout)
    out = []
    netns = lab.node_netns(node)
    for agent in AGENTS:
        name = f"{node}.{agent.name}"
        if agent.modes is not None and lab.mode not in agent.modes:
            if table.pid(name) is not None:
                table.stop(name)
            continue
        if not _module_exists(f"{agent.package}.main"):
            out.append(f"{agent.name} not built yet")
            continue
        if "calc_graph" not in services:
            out.append(f"{agent.name} skipped (needs calc_graph)")
            continue
        pid = table.pid(name)
        if pid is not None:
            out.append(f"{agent.name} pid {pid}")
            continue
        lab.layout.socket(name).unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", netns,
                *console_argv(agent.console_script, f"{agent.package}.main")]
        pid = table.start(ProcessSpec(name, argv, _agent_env(lab, agent, node)))
        out.append(f"{agent.name} pid {pid} started")
    return out


def _check_agents(lab: LabNodes, node: str, report: Callable[[str], None]) -> None:
    table = ProcessTable(lab.root)
    for agent in AGENTS:
        name = f"{node}.{agent.name}"
        if table.pid_path(name).exists() and table.pid(name) is None:
            report(f"{node:<12} warning: {agent.name} exited; last log lines:\n"
                   f"{table.log_tail(name, 8)}")


def start_podserver(lab: LabNodes, node: str) -> str:
    from libcalico.lab import podserver

    table = lab.podserver_table(node)
    sock = lab.podserver_socket(node)
    pid = table.pid("podserver")
    if pid is not None:
        try:
            podserver.request(str(sock), {"op": "list"}, timeout=2.0)
            return f"podserver pid {pid}"
        except OSError:
            table.stop("podserver")
    argv = ["ip", "netns", "exec", lab.node_netns(node), sys.executable, "-m",
            "libcalico.lab.podserver", "--node", node, "--control", str(sock),
            "--pods-dir", str(lab.pods_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALICO_", "OTEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    pid = table.start(ProcessSpec("podserver", argv, env))
    deadline = time.monotonic() + PODSERVER_READY_S
    while True:
        try:
            podserver.request(str(sock), {"op": "list"}, timeout=1.0)
            return f"podserver pid {pid} started"
        except OSError:
            if table.pid("podserver") is None:
                raise LabError(f"the pod server of {node} exited:\n"
                               f"{table.log_tail('podserver')}") from None
            if time.monotonic() > deadline:
                raise LabError(f"the pod server of {node} is not answering on {sock}") from None
            time.sleep(0.05)


# -- the hook ----------------------------------------------------------------------------------


def create_nodes(
    layout: Layout, count: int, report: Callable[[str], None],
    options: NodeOptions | None = None,
) -> int:
    """Bring the lab to at least ``count`` nodes (see the module docstring); returns how many
    exist. Raises LabError with what to do when something cannot be made."""
    options = options or NodeOptions()
    lab = LabNodes(layout)
    if count <= 0 and not lab.nodes:
        return 0
    services = _services(layout)
    if "datastore" not in services:
        raise LabError("lab nodes need the datastore service, which is not running")
    _apply_options(lab, options)
    check_mode(lab.mode, lab.prefix)
    try:
        remade = {seg for seg in ("a", "b")
                  if (seg == "a" or lab.state.get("two_subnets")) and ensure_segment(lab, seg)}
        if lab.state.get("two_subnets"):
            ensure_router(lab, rebuild=bool(remade))
        # A node whose namespace is gone, or whose underlay was remade under it (its veth
        # went with the old one), is made again with the same index and address.
        present = set(list_netns())
        for node, info in list(lab.nodes.items()):
            if info["netns"] not in present or info["segment"] in remade:
                if info["netns"] in present:
                    delete_netns(str(info["netns"]))
                del lab.nodes[node]
                ensure_node(lab, int(info["index"]))
        created = []
        for i in range(1, count + 1):
            node, new = ensure_node(lab, i)
            if new:
                created.append(node)
    except NetnsError as exc:
        raise LabError(f"building the lab's namespaces: {exc}") from exc
    try:
        asyncio.run(_register(lab, options.mode is not None, report))
    except Exception as exc:
        raise LabError(f"registering the nodes in the datastore: {exc}") from exc
    if "ipam" in services and not lab.mode == "bgp":
        _tunnel_addresses(lab, report)
    for node in lab.nodes:
        write_node_files(lab, node)
    lab.state["mtu_mode"] = lab.mode
    lab.save()
    phrases = {}
    for node in sorted(lab.nodes, key=lambda n: lab.nodes[n]["index"]):
        phrases[node] = [*start_agents(lab, node), start_podserver(lab, node)]
    time.sleep(AGENT_START_CHECK_S if any("started" in p for ps in phrases.values()
                                          for p in ps if not p.startswith("podserver")) else 0)
    for node in sorted(lab.nodes, key=lambda n: lab.nodes[n]["index"]):
        info = lab.nodes[node]
        _check_agents(lab, node, report)
        tunnel = f"  {info['tunnel']}" if info.get("tunnel") else ""
        what = "created" if node in created else "exists"
        report(f"{node:<12} netns {info['netns']}  {info['address']}{tunnel}  ({what}; "
               f"{'; '.join(phrases[node])})")
    return len(lab.nodes)


def _apply_options(lab: LabNodes, options: NodeOptions) -> None:
    first = not lab.nodes
    if options.netns_prefix is not None:
        if not first and options.netns_prefix != lab.prefix:
            raise LabError(f"--netns-prefix cannot change while nodes exist (it is "
                           f"{lab.prefix!r}); calico-lab down first")
        lab.state["netns_prefix"] = options.netns_prefix
    lab.state.setdefault("netns_prefix", default_prefix(lab.root))
    if options.two_subnets is not None:
        if not first and bool(lab.state.get("two_subnets")) != options.two_subnets:
            raise LabError("--two-subnets cannot change while nodes exist; calico-lab down first")
        lab.state["two_subnets"] = options.two_subnets
    if options.mode is not None:
        if options.mode not in MODES:
            raise LabError(f"unknown mode {options.mode!r}; one of: {', '.join(MODES)}")
        lab.state["mode"] = options.mode
    lab.state.setdefault("mode", DEFAULT_MODE)
    if options.ipam is not None:
        if options.ipam not in IPAM_TYPES:
            raise LabError(f"unknown IPAM {options.ipam!r}; one of: {', '.join(IPAM_TYPES)}")
        lab.state["ipam"] = options.ipam
    lab.state.setdefault("ipam", "calico-ipam")
    if options.as_number is not None:
        lab.state["as_number"] = options.as_number
    lab.save()


def delete_nodes(layout: Layout, report: Callable[[str], None]) -> bool:
    """Remove every pod, node process and namespace the lab made; True when all went."""
    lab = LabNodes(layout)
    if not lab.exists:
        return True
    from libcalico.lab import pods

    ok = pods.delete_all(lab, report)
    table = ProcessTable(lab.root)
    for node in sorted(lab.nodes):
        for agent in AGENTS:
            name = f"{node}.{agent.name}"
            if table.pid_path(name).exists():
                result = table.stop(name)
                ok = ok and not result.startswith("still running")
                layout.socket(name).unlink(missing_ok=True)
                report(f"{name:<16} {result}")
        ps = lab.podserver_table(node)
        if ps.pid_path("podserver").exists():
            report(f"{node + '.podserver':<16} {ps.stop('podserver')}")
    made = [str(n) for n in lab.state.get("namespaces", [])]
    present = set(list_netns())
    # Nodes and the router first, underlays last: no veth is left dangling into a bridge.
    for netns in sorted(made, key=lambda n: "lab-ul-" in n):
        if netns in present:
            delete_netns(netns)
    left = [n for n in made if n in set(list_netns())]
    if left:
        report(f"namespaces   could not delete: {', '.join(left)}")
        lab.state["namespaces"] = left
        lab.save()
        return False
    if made:
        report(f"namespaces   deleted {len(made)}: {', '.join(made)}")
    for sub in ("nodes", "pods"):
        shutil.rmtree(lab.root / sub, ignore_errors=True)
    lab.state_path.unlink(missing_ok=True)
    return ok
