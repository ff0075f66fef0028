"""``calico-lab up --nodes N``, pods, probes, namespaces and ``down``, as a user runs them.

Each lab runs on a private state dir under /tmp (so its namespaces carry a prefix of their
own and cannot meet another lab's) and is always brought down with ``--purge``. The machine's
own namespace is compared before and after (links, routes, iptables, nftables): the lab must
not touch it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from libcalico.lab.nodes import default_prefix
from libcalico.lab.podserver import rss_kb
from libcalico.netns import have_root, list_netns

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    if not have_root():
        return "the lab's nodes need root to create network namespaces"
    if shutil.which("etcd") is None:
        return "etcd is not installed; run scripts/setup.sh"
    return None


@dataclass
class Lab:
    root: Path

    @property
    def prefix(self) -> str:
        return default_prefix(self.root)

    def cli(self, *args: str, check: bool = True, timeout: float = 180,
            ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALICO_")}
        argv = [str(BIN / "calico-lab"), *args, "--state-dir", str(self.root)]
        if "--" in args:  # everything after -- belongs to the command
            split = list(args).index("--")
            argv = [str(BIN / "calico-lab"), *args[:split], "--state-dir", str(self.root),
                    *args[split:]]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc

    def calicoctl(self, *args: str) -> Any:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALICO_")}
        env["CALICO_DATASTORE"] = f"unix://{self.root}/sock/datastore.sock"
        proc = subprocess.run([str(BIN / "calicoctl"), *args, "-o", "json"], capture_output=True,
                              text=True, timeout=60, env=env, check=True)
        return json.loads(proc.stdout)

    def pod(self, ref: str) -> dict[str, Any]:
        ns, name = ref.split("/")
        data: dict[str, Any] = json.loads((self.root / "pods" / ns / f"{name}.json").read_text())
        return data

    def pids(self) -> list[int]:
        out = []
        for pid_file in self.root.rglob("*.pid"):
            try:
                out.append(int(pid_file.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return out


def root_namespace_state() -> dict[str, str]:
    """What the lab must never change in the machine's own namespace."""
    def out(*cmd: str) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return proc.stdout + proc.stderr

    links = "\n".join(
        # Counters and the kernel's running state are not ours to compare.
        line.split(" qlen")[0] for line in out("ip", "-o", "link").splitlines())
    return {
        "links": links,
        "routes": out("ip", "route", "show", "table", "all"),
        "iptables": out("iptables-save"),
        "nft": out("nft", "list", "ruleset"),
    }


@contextmanager
def new_lab(*up_args: str) -> Iterator[Lab]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(Path(tempfile.mkdtemp(prefix="lab-e2e-", dir="/tmp")))
    try:
        lab.cli("up", *up_args)
        yield lab
    finally:
        lab.cli("down", "--purge", check=False)
        shutil.rmtree(lab.root, ignore_errors=True)


@pytest.fixture(scope="module")
def lab3() -> Iterator[Lab]:
    with new_lab("--nodes", "3") as lab:
        yield lab


def test_up_makes_registers_and_configures_three_nodes(lab3: Lab) -> None:
    ns = set(list_netns())
    p = lab3.prefix
    assert {f"{p}node-1", f"{p}node-2", f"{p}node-3", f"{p}lab-ul-a"} <= ns
    nodes = {n["metadata"]["name"]: n for n in lab3.calicoctl("get", "nodes")["items"]}
    assert set(nodes) >= {"node-1", "node-2", "node-3"}
    n1 = nodes["node-1"]
    assert n1["spec"]["bgp"]["ipv4Address"] == "172.30.1.1/24"
    assert n1["metadata"]["labels"]["kubernetes.io/hostname"] == "node-1"
    assert n1["spec"].get("ipv4VXLANTunnelAddr", "").startswith("10.244.")
    pool = lab3.calicoctl("get", "ippool", "default-ipv4-ippool")
    assert (pool["spec"]["cidr"], pool["spec"]["vxlanMode"]) == ("10.244.0.0/16", "Always")
    conflist = json.loads((lab3.root / "nodes" / "node-2" / "10-calico.conflist").read_text())
    calico = conflist["plugins"][0]
    assert (calico["type"], calico["nodename"], calico["ipam"]["type"]) == (
        "calico", "node-2", "calico-ipam")
    assert (lab3.root / "nodes" / "node-2" / "mtu").read_text().strip() in ("1450", "1400")
    # Underlay: nodes reach each other.
    ping = subprocess.run(["ip", "netns", "exec", f"{p}node-1", "ping", "-c1", "-W1",
                           "172.30.1.3"], capture_output=True, check=False)
    assert ping.returncode == 0
    # Idempotent: a second up leaves the nodes alone.
    again = lab3.cli("up", "--nodes", "3").stdout
    assert "node-3" in again and "(exists" in again and "created;" not in again


def test_two_pods_on_a_node_reach_each_other_and_the_node(lab3: Lab) -> None:
    lab3.cli("pod", "add", "node-1", "default/web-1", "--labels", "app=web")
    out = lab3.cli("pod", "add", "node-1", "shop/cart-1", "--labels", "app=cart,tier=be").stdout
    assert "namespace shop created" in out
    try:
        for proto, port in (("tcp", "80"), ("tcp", "81"), ("udp", "80"), ("udp", "81")):
            res = lab3.cli("probe", "default/web-1", "shop/cart-1", "--port", port,
                           "--protocol", proto)
            assert res.stdout.startswith("ok:") and "shop/cart-1" in res.stdout, res.stdout
        lab3.cli("probe", "shop/cart-1", "default/web-1", "--protocol", "icmp")
        lab3.cli("probe", "default/web-1", "172.30.1.1", "--protocol", "icmp")  # its node
        # Nothing listens on 82: refused at once, exit 1.
        t0 = time.monotonic()
        closed = lab3.cli("probe", "default/web-1", "shop/cart-1", "--port", "82", check=False)
        assert closed.returncode == 1 and closed.stdout.startswith("FAIL")
        # A dropped packet fails within the probe's bound (2 s), plus the CLI's start-up.
        dropped = lab3.cli("probe", "default/web-1", "192.0.2.77", "--port", "80",
                           "--timeout", "1", check=False)
        assert dropped.returncode == 1
        assert time.monotonic() - t0 < 15
        # exec runs in the pod's namespace.
        addr = lab3.cli("exec", "shop/cart-1", "--", "ip", "-o", "-4", "addr", "show",
                        "eth0").stdout
        assert lab3.pod("shop/cart-1")["ips"][0] in addr
        lab3.cli("pod", "check", "shop/cart-1")
        listing = lab3.cli("pod", "list", "-o", "wide").stdout
        assert "cart-1" in listing and "app=cart,tier=be" in listing
        # The endpoint: pod labels, named ports, namespace profile.
        eps = lab3.calicoctl("get", "workloadendpoints", "-n", "shop")["items"]
        (ep,) = [e for e in eps if e["spec"]["pod"] == "cart-1"]
        assert ep["metadata"]["name"] == "node--1-k8s-cart--1-eth0"
        assert ep["metadata"]["labels"]["app"] == "cart"
        assert ep["spec"]["profiles"] == ["kns.shop"]
        assert sorted(p["name"] for p in ep["spec"]["ports"]) == [
            "serve-80-tcp", "serve-80-udp", "serve-81-tcp", "serve-81-udp"]
        # One pod server per node, small.
        ps_pid = int((lab3.root / "nodes" / "node-1" / "pids" / "podserver.pid")
                     .read_text().split()[0])
        assert 0 < rss_kb(ps_pid) < 40_000
    finally:
        lab3.cli("pod", "del", "default/web-1", check=False)
        lab3.cli("pod", "del", "shop/cart-1", check=False)
    assert "cart-1" not in lab3.cli("pod", "list").stdout
    eps = lab3.calicoctl("get", "workloadendpoints", "-n", "shop")["items"]
    assert not eps


def test_namespaces_are_kns_profiles_with_their_labels(lab3: Lab) -> None:
    lab3.cli("ns", "add", "team-a", "--labels", "env=dev")
    lab3.cli("ns", "label", "team-a", "owner=alice", "env-")
    profile = lab3.calicoctl("get", "profile", "kns.team-a")
    assert profile["spec"]["labelsToApply"] == {
        "pcns.owner": "alice", "pcns.kubernetes.io/metadata.name": "team-a",
        "pcns.projectcalico.org/name": "team-a"}
    assert "team-a" in lab3.cli("ns", "list").stdout
    bad = lab3.cli("ns", "label", "team-a", "bad key=x", check=False)
    assert bad.returncode == 1 and "calico-lab:" in bad.stderr


def test_errors_are_one_line(lab3: Lab) -> None:
    res = lab3.cli("pod", "add", "node-9", "default/x", check=False)
    assert res.returncode == 1 and "no lab node 'node-9'" in res.stderr
    res = lab3.cli("pod", "del", "default/nope", check=False)
    assert res.returncode == 1 and "no lab pod default/nope" in res.stderr
    lab3.cli("pod", "add", "node-2", "default/twice")
    try:
        res = lab3.cli("pod", "add", "node-3", "default/twice", check=False)
        assert res.returncode == 1 and "exists" in res.stderr
    finally:
        lab3.cli("pod", "del", "default/twice")


def test_up_then_down_leaves_nothing_behind() -> None:
    before = root_namespace_state()
    pids: list[int] = []
    prefix = ""
    with new_lab("--nodes", "3") as lab:
        prefix = lab.prefix
        lab.cli("pod", "add", "node-1", "default/a", "--publish", "8080:80")
        lab.cli("pod", "add", "node-2", "default/b")
        pids = lab.pids()
        assert len([n for n in list_netns() if n.startswith(prefix)]) == 6
        res = lab.cli("down")
        assert "pods         deleted 2 of 2" in res.stdout
    assert not [n for n in list_netns() if n.startswith(prefix)]
    assert pids and not [p for p in pids if Path(f"/proc/{p}").exists()
                         and "zombie" not in Path(f"/proc/{p}/status").read_text()]
    after = root_namespace_state()
    for key in before:
        assert after[key] == before[key], f"{key} changed in the machine's own namespace"


def test_two_subnets_through_a_router_with_host_local() -> None:
    with new_lab("--nodes", "2", "--two-subnets", "--mode", "vxlan-crosssubnet",
                 "--ipam", "host-local") as lab:
        p = lab.prefix
        assert f"{p}lab-router" in list_netns()
        nodes = {n["metadata"]["name"]: n for n in lab.calicoctl("get", "nodes")["items"]}
        assert nodes["node-1"]["spec"]["bgp"]["ipv4Address"] == "172.30.1.1/24"
        assert nodes["node-2"]["spec"]["bgp"]["ipv4Address"] == "172.30.2.2/24"
        pool = lab.calicoctl("get", "ippool", "default-ipv4-ippool")
        assert pool["spec"]["vxlanMode"] == "CrossSubnet"
        ping = subprocess.run(["ip", "netns", "exec", f"{p}node-1", "ping", "-c1", "-W1",
                               "172.30.2.2"], capture_output=True, check=False)
        assert ping.returncode == 0  # routed by the router namespace
        # host-local on each node's pod CIDR (status.podCIDRs, substituted for usePodCidr).
        lab.cli("pod", "add", "node-2", "default/hl")
        assert lab.pod("default/hl")["ips"][0].startswith("10.245.2.")
        assert nodes["node-2"]["status"]["podCIDRs"] == ["10.245.2.0/24"]
        lab.cli("pod", "del", "default/hl")


def test_ipip_mode_says_when_the_kernel_lacks_ipip() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    scratch = f"ipipcheck{os.getpid()}"
    subprocess.run(["ip", "netns", "add", scratch], check=True)
    try:
        has_ipip = subprocess.run(["ip", "-n", scratch, "link", "add", "t", "type", "ipip"],
                                  capture_output=True, check=False).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "delete", scratch], check=False)
    root = Path(tempfile.mkdtemp(prefix="lab-e2e-", dir="/tmp"))
    lab = Lab(root)
    try:
        res = lab.cli("up", "--nodes", "1", "--mode", "ipip", check=False)
        if has_ipip:
            assert res.returncode == 0, res.stderr
        else:
            assert res.returncode == 1
            assert "this kernel lacks IPIP" in res.stderr
            assert not [n for n in list_netns() if n.startswith(lab.prefix)]
    finally:
        lab.cli("down", "--purge", check=False)
        shutil.rmtree(root, ignore_errors=True)
