"""The ``calico`` plugin in real namespaces, chained with the reference plugins.

A node namespace on an underlay segment (with a client host beside it), pod namespaces made
per test, and the lab's control plane on a private state dir. The plugins run inside the
node's namespace exactly as a runtime runs them (``libcalico.lab.cni_runtime``). Everything is
deleted afterwards, pass or fail: namespaces by the ``topology`` fixture, the control plane
by its fixture; each test removes its own pool changes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libcalico.cni import wep
from libcalico.lab import podserver
from libcalico.lab.cni_runtime import CniExecError, CniRuntime, RuntimeConf, k8s_args
from libcalico.lab.probe import probe
from libcalico.lab.testing import (
    ControlPlane,
    calico_conf,
    ippool,
    lab_conflist,
    plugin_env,
    run_plugin,
)
from libcalico.netns import Topology, have_root, run
from tests.paths import CNI_EXAMPLES

EXAMPLE = CNI_EXAMPLES / "10-calico.conflist"
NODE = "node-k"
PORTMAP = {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}}
BANDWIDTH = {"type": "bandwidth", "capabilities": {"bandwidth": True}}
REFERENCE = Path("/usr/lib/cni")


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlane]:
    if not have_root():
        pytest.skip("kernel tests need root to create network namespaces")
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed; run scripts/setup.sh")
    plane = ControlPlane()
    try:
        plane.ds(lambda c: c.apply(ippool("kernel-pool", "10.246.0.0/16")))
        plane.ds(lambda c: c.apply(ippool("kernel-pool-v6", "fd00:246::/112", block_size=122)))
        yield plane
    finally:
        plane.close()


class Node:
    """The node namespace, a client host on the same segment, and pods made on demand."""

    def __init__(self, topo: Topology, cp: ControlPlane) -> None:
        self.topo = topo
        self.cp = cp
        topo.add_segment("ul", "10.93.0.0/24")
        self.host = topo.add_host("node")
        self.client = topo.add_host("client")
        self.netns = self.host.netns
        self.runtime = CniRuntime(netns_exec=self.netns)

    def pod(self, name: str) -> str:
        netns = self.topo.ns(f"pod-{name}")
        run(["ip", "netns", "add", netns])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        return netns

    def rt(self, pod_netns: str, name: str, cid: str, **caps: Any) -> RuntimeConf:
        return RuntimeConf(cid, f"/var/run/netns/{pod_netns}", "eth0",
                           k8s_args("default", name, cid), caps)

    def links(self) -> list[str]:
        out = run(["ip", "-n", self.netns, "-o", "link"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def endpoints(self) -> list[dict[str, Any]]:
        items, _ = self.cp.ds(lambda c: c.list("WorkloadEndpoint"))
        return [i for i in items if i["spec"].get("node") == NODE]

    def handles(self) -> list[str]:
        kvs, _ = self.cp.ds(lambda c: c.kv_list("/calico/ipam/v2/handle/"))
        return [kv.key.rsplit("/", 1)[-1] for kv in kvs]


@pytest.fixture
def node(topology: Topology, cp: ControlPlane) -> Node:
    if not (REFERENCE / "portmap").exists():
        pytest.skip("the reference CNI plugins are not installed (containernetworking-plugins)")
    return Node(topology, cp)


@pytest.fixture
def pod_server(tmp_path: Path) -> Iterator[str]:
    """The lab's pod server (sockets only inside pods; nothing bound in this namespace)."""
    sock = str(tmp_path / "ps.sock")
    proc = subprocess.Popen([sys.executable, "-m", "libcalico.lab.podserver", "--node", NODE,
                             "--control", sock], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


def _chain_add_check_del_del(node: Node, pod_server: str, dual_stack: bool) -> None:
    ipam: dict[str, Any] = {"type": "calico-ipam", "ipam_endpoint": node.cp.ipam}
    if dual_stack:
        ipam["assign_ipv6"] = "true"
    conflist = lab_conflist(node.cp, PORTMAP, BANDWIDTH, node=NODE, ipam=ipam)
    pod = node.pod("web")
    bw = {"ingressRate": 8_000_000, "ingressBurst": 1_000_000,
          "egressRate": 8_000_000, "egressBurst": 1_000_000}
    rt = node.rt(pod, "web", "c0ffee01",
                 portMappings=[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                 bandwidth=bw)
    result = node.runtime.add(conflist, rt)
    try:
        _chain_checks(node, pod_server, conflist, rt, result, dual_stack)
    except BaseException:
        node.runtime.delete(conflist, rt, result)
        raise


def _chain_checks(
    node: Node, pod_server: str, conflist: dict[str, Any], rt: RuntimeConf,
    result: dict[str, Any], dual_stack: bool,
) -> None:
    host_if = wep.identifiers({"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web"},
                              "c0ffee01", "eth0", NODE, "k8s-pod-network").host_ifname
    ifaces = {i["name"]: i for i in result["interfaces"]}
    assert ifaces[host_if]["mac"] == "ee:ee:ee:ee:ee:ee" and "sandbox" not in ifaces[host_if]
    assert ifaces["eth0"]["sandbox"] == rt.netns
    ip = result["ips"][0]
    assert ip["address"].endswith("/32") and ip["address"].startswith("10.246.")
    pod_ip = ip["address"].split("/")[0]
    assert result["interfaces"][ip["interface"]]["name"] == "eth0"
    assert {"dst": "0.0.0.0/0", "gw": "169.254.1.1"} in result["routes"]
    nets = [f"{pod_ip}/32"]
    if dual_stack:
        ip6 = result["ips"][1]
        assert ip6["address"].endswith("/128") and ip6["address"].startswith("fd00:246::")
        assert {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"} in result["routes"]
        nets.append(ip6["address"])

    # The endpoint Calico would write.
    (ep,) = node.endpoints()
    assert ep["metadata"]["name"] == "node--k-k8s-web-eth0"
    assert ep["spec"]["ipNetworks"] == nets
    assert ep["spec"]["interfaceName"] == host_if
    assert ep["spec"]["containerID"] == "c0ffee01" and ep["spec"]["profiles"] == ["kns.default"]
    assert ep["spec"]["mac"] == ifaces["eth0"]["mac"]
    assert ep["metadata"]["labels"]["projectcalico.org/orchestrator"] == "k8s"

    # bandwidth shaped the host veth and made its ifb; portmap wrote its NAT chains.
    assert "tbf" in run(["tc", "-n", node.netns, "qdisc", "show", "dev", host_if]).stdout
    assert any(link.startswith("bwp") for link in node.links())
    nat = run(["iptables-save", "-t", "nat"], netns=node.netns).stdout
    assert "CNI-HOSTPORT-DNAT" in nat and "8080" in nat

    # The installed portmap (containernetworking-plugins 1.1.1) checks the DNAT rules built
    # from the pod's IPv4 address in ip6tables too, and fails, single- or dual-stack
    # (containernetworking/plugins#819, fixed in 1.2.0): every other plugin's CHECK passes,
    # and portmap's fails with exactly that (or, once fixed, passes).
    for plugin in conflist["plugins"]:
        conf = node.runtime.plugin_config(conflist, plugin, result, rt)
        if plugin["type"] != "portmap":
            node.runtime.exec_plugin(plugin["type"], "CHECK", rt, conf)
            continue
        try:
            node.runtime.exec_plugin("portmap", "CHECK", rt, conf)
        except CniExecError as exc:
            assert "could not check ipv6 dnat" in exc.msg, exc

    # The host port on the node reaches the pod's server, from another host on the underlay.
    podserver.request(pod_server, {"op": "add", "pod": "default/web", "netns": rt.netns})
    client = f"/var/run/netns/{node.client.netns}"
    direct = probe(client, pod_ip, 80, "tcp")  # the client has no route to pods
    assert not direct.ok
    via_port = probe(client, str(node.host.address.ip), 8080, "tcp")
    assert via_port.ok and "default/web" in via_port.detail, via_port
    podserver.request(pod_server, {"op": "del", "pod": "default/web"})

    node.runtime.delete(conflist, rt, result)
    node.runtime.delete(conflist, rt, result)  # DEL again: nothing left to do, still success
    assert host_if not in node.links()
    assert not any(link.startswith("bwp") for link in node.links())
    assert not node.endpoints()
    assert "k8s-pod-network.c0ffee01" not in node.handles()
    assert "8080" not in run(["iptables-save", "-t", "nat"], netns=node.netns).stdout
    assert "10.246." not in run(["ip", "-n", node.netns, "route"]).stdout


@pytest.mark.parametrize("dual_stack", [False, True], ids=["ipv4", "dual-stack"])
def test_chain_with_portmap_and_bandwidth_add_check_del_del(
    node: Node, pod_server: str, dual_stack: bool
) -> None:
    _chain_add_check_del_del(node, pod_server, dual_stack)


def test_check_names_what_is_missing(node: Node) -> None:
    conflist = lab_conflist(node.cp, node=NODE)
    pod = node.pod("chk")
    rt = node.rt(pod, "chk", "c0ffee02")
    result = node.runtime.add(conflist, rt)
    try:
        run(["ip", "-n", pod, "route", "del", "default"])
        with pytest.raises(CniExecError) as err:
            node.runtime.check(conflist, rt, result)
        assert err.value.plugin == "calico" and err.value.code == 103
        assert "default route via 169.254.1.1 is missing" in err.value.msg
    finally:
        node.runtime.delete(conflist, rt, result)


def test_two_pods_reach_each_other_and_their_node(node: Node) -> None:
    conflist = lab_conflist(node.cp, node=NODE)
    rts, results = [], []
    for name, cid in (("a", "c0ffee0a"), ("b", "c0ffee0b")):
        rt = node.rt(node.pod(name), name, cid)
        rts.append(rt)
        results.append(node.runtime.add(conflist, rt))
    try:
        ip_b = results[1]["ips"][0]["address"].split("/")[0]
        assert probe(rts[0].netns, ip_b, 0, "icmp").ok
        assert probe(rts[0].netns, str(node.host.address.ip), 0, "icmp").ok
        mtu = run(["ip", "-n", rts[0].netns.rsplit("/", 1)[-1], "-j", "link", "show", "eth0"])
        assert json.loads(mtu.stdout)[0]["mtu"] == 1450
    finally:
        for rt, res in zip(rts, results, strict=True):
            node.runtime.delete(conflist, rt, res)


def test_failures_after_ipam_release_and_remove_everything(node: Node, tmp_path: Path) -> None:
    # 1. The pod's namespace does not exist: fails after IPAM, which is released.
    conflist = lab_conflist(node.cp, node=NODE)
    rt = node.rt("does-not-exist", "ghost", "c0ffee03")
    with pytest.raises(CniExecError) as err:
        node.runtime.add(conflist, rt)
    assert err.value.code == 4 and "does not exist" in err.value.msg
    assert "k8s-pod-network.c0ffee03" not in node.handles()

    # 2. The datastore refuses the endpoint (a label it rejects): veth and addresses go.
    meta_dir = tmp_path / "meta"
    (meta_dir / "default").mkdir(parents=True)
    (meta_dir / "default" / "bad.json").write_text(json.dumps({"labels": {"bad key!": "x"}}))
    conflist = lab_conflist(node.cp, node=NODE, pod_metadata_dir=str(meta_dir))
    pod = node.pod("bad")
    rt = node.rt(pod, "bad", "c0ffee04")
    before = node.links()
    with pytest.raises(CniExecError) as err:
        node.runtime.add(conflist, rt)
    assert err.value.code == 102, err.value
    assert node.links() == before
    assert "k8s-pod-network.c0ffee04" not in node.handles()
    assert "inet " not in run(["ip", "-n", pod, "addr", "show"]).stdout.replace(
        "inet 127.0.0.1", "")
    assert not node.endpoints()


def test_exhausted_pool_leaves_no_veth_address_or_endpoint(node: Node) -> None:
    node.cp.ds(lambda c: c.apply(ippool("kernel-tiny", "10.99.8.0/30", block_size=30)))
    ipam = {"type": "calico-ipam", "ipam_endpoint": node.cp.ipam, "ipv4_pools": ["10.99.8.0/30"]}
    conflist = lab_conflist(node.cp, node=NODE, ipam=ipam)
    done: list[tuple[RuntimeConf, dict[str, Any]]] = []
    try:
        for i in range(4):
            rt = node.rt(node.pod(f"t{i}"), f"t{i}", f"c0ffee1{i}")
            done.append((rt, node.runtime.add(conflist, rt)))
        links, handles = node.links(), node.handles()
        pod = node.pod("over")
        rt = node.rt(pod, "over", "c0ffee19")
        with pytest.raises(CniExecError) as err:
            node.runtime.add(conflist, rt)
        assert err.value.code == 100 and "10.99.8.0/30" in err.value.msg + err.value.details
        assert node.links() == links and node.handles() == handles
        assert "eth0" not in run(["ip", "-n", pod, "link"]).stdout
        assert len(node.endpoints()) == 4
    finally:
        for rt, res in done:
            node.runtime.delete(conflist, rt, res)
        node.cp.ds(lambda c: c.delete("IPPool", "kernel-tiny"))


def test_sandbox_restart_keeps_the_new_sandbox_through_the_old_ones_del(node: Node) -> None:
    conflist = lab_conflist(node.cp, node=NODE)
    old = node.rt(node.pod("re-old"), "re", "c0ffee21")
    old_result = node.runtime.add(conflist, old)
    new = node.rt(node.pod("re-new"), "re", "c0ffee22")
    new_result = node.runtime.add(conflist, new)
    host_if = new_result["interfaces"][0]["name"]
    (ep,) = node.endpoints()
    assert ep["spec"]["containerID"] == "c0ffee22"
    node.runtime.delete(conflist, old, old_result)  # the old sandbox goes away late
    (ep,) = node.endpoints()
    assert ep["spec"]["containerID"] == "c0ffee22" and host_if in node.links()
    assert "k8s-pod-network.c0ffee21" not in node.handles()
    node.runtime.delete(conflist, new, new_result)
    assert not node.endpoints() and host_if not in node.links()


@pytest.mark.parametrize("version", ["0.2.0", "0.3.1", "0.4.0", "1.1.0"])
def test_results_in_each_version_and_the_cni_orchestrator(node: Node, version: str) -> None:
    conf = {"name": "plain-net", "cniVersion": version, **calico_conf(node.cp, node=NODE)}
    pod = node.pod(f"v{version.replace('.', '')}")
    cid = "0123456789abcdef" + version.replace(".", "")
    env = plugin_env("ADD", container_id=cid, netns=f"/var/run/netns/{pod}")
    add = run_plugin("calico", conf, env, netns_exec=node.netns)
    assert add.rc == 0, add.out
    if version == "0.2.0":
        assert add.out["ip4"]["ip"].endswith("/32")
    else:
        ip = add.out["ips"][0]
        assert ("version" in ip) == (version < "1.0.0") and ip["interface"] == 1
    (ep,) = node.endpoints()
    assert ep["spec"]["orchestrator"] == "cni" and ep["metadata"]["namespace"] == "default"
    assert ep["metadata"]["name"] == f"node--k-cni-{cid}-eth0"
    assert ep["spec"]["profiles"] == ["plain-net"]
    assert f"cali{cid[:11]}" in node.links()
    assert node.cp.ds(lambda c: c.get("Profile", "plain-net"))["spec"]["labelsToApply"] == {
        "plain-net": ""}
    if version >= "0.4.0":
        check = dict(conf, prevResult=add.out)
        ok = run_plugin("calico", check, {**env, "CNI_COMMAND": "CHECK"}, netns_exec=node.netns)
        assert ok.rc == 0, ok.out
    for _ in range(2):
        gone = run_plugin("calico", conf, {**env, "CNI_COMMAND": "DEL"}, netns_exec=node.netns)
        assert gone.rc == 0, gone.out
    assert not node.endpoints()


def test_users_conflist_with_host_local_use_pod_cidr(node: Node, tmp_path: Path) -> None:
    """/work/shared/examples/cni/10-calico.conflist, unchanged, once pointed at our datastore:
    host-local on the Node's pod CIDR, then portmap and bandwidth (cniVersion 0.3.1)."""
    conflist = json.loads(EXAMPLE.read_text())
    # host-local keeps its state under /var/lib/cni/networks/<name> by default (the file
    # names no dataDir): whatever this test makes there is removed again.
    made = next((p for p in (Path("/var/lib/cni"), Path("/var/lib/cni/networks"),
                             Path("/var/lib/cni/networks/k8s-pod-network")) if not p.exists()),
                None)
    master = {"apiVersion": "projectcalico.org/v3", "kind": "Node",
              "metadata": {"name": "master01"},
              "spec": {"bgp": {"ipv4Address": "10.93.0.1/24"}}}
    node.cp.ds(lambda c: c.apply(master))
    env = {**os.environ, "CALICO_DATASTORE": node.cp.datastore,
           "CALICO_CNI_LOG_FILE": str(tmp_path / "cni.log")}
    runtime = CniRuntime(netns_exec=node.netns, env=env)
    pod = node.pod("user")
    rt = RuntimeConf("c0ffee31", f"/var/run/netns/{pod}", "eth0",
                     k8s_args("default", "user", "c0ffee31"), {})
    try:
        # No pod CIDR on the Node yet: a clear error, nothing made.
        with pytest.raises(CniExecError) as err:
            runtime.add(conflist, rt)
        assert err.value.code == 7 and "pod CIDR" in err.value.msg
        master["status"] = {"podCIDRs": ["10.247.3.0/24"]}
        node.cp.ds(lambda c: c.apply(master))
        result = runtime.add(conflist, rt)
        (ip,) = result["ips"]
        assert ip["version"] == "4" and ip["address"].startswith("10.247.3.")
        log = (tmp_path / "cni.log").read_text()
        assert "datastore_type 'kubernetes' cannot be honoured" in log
        assert "kubernetes.kubeconfig cannot be honoured" in log
        assert not node.endpoints()  # written under master01, not this test's node name
        items, _ = node.cp.ds(lambda c: c.list("WorkloadEndpoint", "default"))
        assert [i["spec"]["node"] for i in items if i["spec"]["pod"] == "user"] == ["master01"]
        runtime.delete(conflist, rt, result)
        runtime.delete(conflist, rt, result)
        assert not Path("/var/lib/cni/networks/k8s-pod-network", ip["address"].split("/")[0]) \
            .exists()
    finally:
        try:
            runtime.delete(conflist, rt, None)
        except CniExecError:
            pass
        node.cp.ds(lambda c: c.delete("Node", "master01"))
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


@pytest.mark.parametrize("include_default_routes", [False, True])
def test_host_local_ranges_with_its_routes(
    node: Node, tmp_path: Path, include_default_routes: bool
) -> None:
    """host-local with explicit ``ranges`` and ``routes``: Calico installs only the IPAM's
    routes unless include_default_routes is set."""
    ipam = {"type": "host-local", "dataDir": str(tmp_path / "host-local"),
            "ranges": [[{"subnet": "10.249.1.0/24"}]], "routes": [{"dst": "10.250.0.0/16"}]}
    conflist = lab_conflist(node.cp, node=NODE, ipam=ipam,
                            include_default_routes=include_default_routes)
    pod = node.pod("hl")
    rt = node.rt(pod, "hl", "c0ffee41")
    result = node.runtime.add(conflist, rt)
    try:
        assert result["ips"][0]["address"].startswith("10.249.1.")
        routes = run(["ip", "-n", pod, "route"]).stdout
        assert "10.250.0.0/16 via 169.254.1.1 dev eth0" in routes
        assert ("default via 169.254.1.1" in routes) == include_default_routes
        want = [{"dst": "10.250.0.0/16", "gw": "169.254.1.1"}]
        if include_default_routes:
            want.insert(0, {"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
        assert result["routes"] == want
        node.runtime.check(conflist, rt, result)
    finally:
        node.runtime.delete(conflist, rt, result)
    assert not [f for f in (tmp_path / "host-local").rglob("10.249.1.*")]


def test_gc_collects_attachments_the_runtime_no_longer_has(node: Node) -> None:
    conflist = lab_conflist(node.cp, node=NODE, version="1.1.0")
    keep = node.rt(node.pod("keep"), "keep", "c0ffee51")
    gone = node.rt(node.pod("gone"), "gone", "c0ffee52")
    keep_result = node.runtime.add(conflist, keep)
    gone_result = node.runtime.add(conflist, gone)
    gone_if = gone_result["interfaces"][0]["name"]
    try:
        gc = {"name": conflist["name"], "cniVersion": "1.1.0", **conflist["plugins"][0],
              "cni.dev/valid-attachments": [{"containerID": "c0ffee51", "ifname": "eth0"}]}
        run_gc = run_plugin("calico", gc, plugin_env("GC", ifname=""), netns_exec=node.netns)
        assert run_gc.rc == 0, run_gc.out
        assert [e["spec"]["containerID"] for e in node.endpoints()] == ["c0ffee51"]
        handles = node.handles()
        assert "k8s-pod-network.c0ffee52" not in handles
        assert "k8s-pod-network.c0ffee51" in handles
        assert gone_if not in node.links() and keep_result["interfaces"][0]["name"] in \
            node.links()
    finally:
        node.runtime.delete(conflist, keep, keep_result)
        node.runtime.delete(conflist, gone, gone_result)
