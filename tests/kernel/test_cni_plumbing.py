"""Workload veth plumbing against a real kernel: a node namespace and two pod namespaces."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest

from libcalico.cni import plumbing
from libcalico.netns import Topology, run


def _in(netns: str, fn: Callable[[], object]) -> object:
    """Run ``fn`` on a fresh thread switched into ``netns`` (setns is per thread)."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            with plumbing.in_netns(f"/var/run/netns/{netns}"):
                result["value"] = fn()
        except BaseException as exc:  # surfaced to the test below
            result["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


@pytest.fixture
def node_and_pods(topology: Topology) -> tuple[Topology, str, list[str]]:
    topology.add_segment("ul", "10.91.0.0/24")
    node = topology.add_host("node").netns
    pods = []
    for name in ("pod-a", "pod-b"):
        ns = topology.ns(name)
        run(["ip", "netns", "add", ns])
        pods.append(ns)
    return topology, node, pods


def test_veth_names_follow_calico() -> None:
    name = plumbing.host_veth_name("default.nginx")
    assert name.startswith("cali") and len(name) == 15
    assert name == "cali" + __import__("hashlib").sha1(b"default.nginx").hexdigest()[:11]


def test_two_pods_on_a_node_reach_each_other_and_the_node(
    node_and_pods: tuple[Topology, str, list[str]],
) -> None:
    _topo, node, pods = node_and_pods
    addrs = ["10.244.1.2/26", "10.244.1.3/26"]
    ifaces = []
    for pod, addr in zip(pods, addrs, strict=True):
        spec = plumbing.PodNetworkSpec(
            netns_path=f"/var/run/netns/{pod}",
            host_ifname=plumbing.host_veth_name(pod),
            addresses=[addr],
            mtu=1450,
        )
        ifaces.append(_in(node, lambda spec=spec: plumbing.setup_pod_network(spec)))
    wl = ifaces[0]
    assert isinstance(wl, plumbing.WorkloadInterface)
    assert wl.addresses == ("10.244.1.2/32",)

    link = json.loads(run(["ip", "-j", "-n", node, "link", "show", wl.host_ifname]).stdout)[0]
    assert link["address"] == plumbing.HOST_MAC and link["mtu"] == 1450
    proxy = run(["cat", f"/proc/sys/net/ipv4/conf/{wl.host_ifname}/proxy_arp"], netns=node)
    assert proxy.stdout.strip() == "1"
    routes = run(["ip", "-n", node, "route", "show", "10.244.1.2"]).stdout
    assert f"dev {wl.host_ifname} scope link" in routes
    pod_routes = run(["ip", "-n", pods[0], "route"]).stdout
    assert "default via 169.254.1.1 dev eth0" in pod_routes

    run(["ping", "-c1", "-W2", "10.244.1.3"], netns=pods[0])
    node_ip = "10.91.0.1"
    run(["ping", "-c1", "-W2", node_ip], netns=pods[0])

    problems = _in(node, lambda: plumbing.check_pod_network(
        f"/var/run/netns/{pods[0]}", "eth0", ["10.244.1.2/26"], wl.host_ifname))
    assert problems == []


def test_check_reports_missing_pieces_and_delete_is_idempotent(
    node_and_pods: tuple[Topology, str, list[str]],
) -> None:
    _topo, node, pods = node_and_pods
    host_if = plumbing.host_veth_name("x.y")
    spec = plumbing.PodNetworkSpec(
        netns_path=f"/var/run/netns/{pods[0]}", host_ifname=host_if, addresses=["10.244.2.5/26"]
    )
    _in(node, lambda: plumbing.setup_pod_network(spec))
    run(["ip", "-n", pods[0], "addr", "flush", "dev", "eth0"])
    problems = _in(node, lambda: plumbing.check_pod_network(
        spec.netns_path, "eth0", ["10.244.2.5/26"], host_if))
    # Flushing the address takes the routes that depend on it too; both are reported.
    assert "address 10.244.2.5/32 is missing on eth0" in problems
    assert _in(node, lambda: plumbing.delete_host_veth(host_if)) is True
    assert _in(node, lambda: plumbing.delete_host_veth(host_if)) is False


def test_failure_leaves_no_veth_behind(node_and_pods: tuple[Topology, str, list[str]]) -> None:
    _topo, node, pods = node_and_pods
    host_if = plumbing.host_veth_name("bad.route")
    spec = plumbing.PodNetworkSpec(
        netns_path=f"/var/run/netns/{pods[0]}", host_ifname=host_if,
        addresses=["10.244.3.5/26"], routes=["not-a-cidr"], include_default_routes=False,
    )
    with pytest.raises(plumbing.PlumbingError):
        _in(node, lambda: plumbing.setup_pod_network(spec))
    assert "eth0" not in run(["ip", "-n", pods[0], "link"]).stdout
    assert host_if not in run(["ip", "-n", node, "link"]).stdout


def test_dual_stack_pod_gets_both_families(
    node_and_pods: tuple[Topology, str, list[str]],
) -> None:
    _topo, node, pods = node_and_pods
    host_if = plumbing.host_veth_name("dual.stack")
    spec = plumbing.PodNetworkSpec(
        netns_path=f"/var/run/netns/{pods[0]}", host_ifname=host_if,
        addresses=["10.244.4.5/26", "fd00:244::5/122"],
    )
    wl = _in(node, lambda: plumbing.setup_pod_network(spec))
    assert isinstance(wl, plumbing.WorkloadInterface)
    assert wl.addresses == ("10.244.4.5/32", "fd00:244::5/128")
    pod_v6 = run(["ip", "-6", "-n", pods[0], "route"]).stdout
    assert f"default via {plumbing.GATEWAY_V6} dev eth0" in pod_v6
    node_v6 = run(["ip", "-6", "-n", node, "route", "show", "fd00:244::5"]).stdout
    assert f"dev {host_if}" in node_v6
