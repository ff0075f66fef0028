"""The kind registry: plurals, aliases and the columns calicoctl prints for each kind."""

from __future__ import annotations

from typing import Any

import pytest

from libcalico.errors import ValidationError
from libcalico.model import KINDS, lookup_kind, validate
from libcalico.model.kinds import go_float, join


def test_registry_covers_the_sixteen_kinds() -> None:
    assert sorted(KINDS) == sorted([
        "IPPool", "Node", "WorkloadEndpoint", "HostEndpoint", "Profile", "NetworkPolicy",
        "GlobalNetworkPolicy", "NetworkSet", "GlobalNetworkSet", "FelixConfiguration",
        "BGPConfiguration", "BGPPeer", "IPReservation", "Tier", "ClusterInformation",
        "KubeControllersConfiguration",
    ])  # fmt: skip
    namespaced = {k for k, info in KINDS.items() if info.namespaced}
    assert namespaced == {"WorkloadEndpoint", "NetworkPolicy", "NetworkSet"}
    for info in KINDS.values():
        assert info.kind.lower() in info.aliases  # calicoctl accepts the lower-cased kind
        assert info.plural in info.aliases


@pytest.mark.parametrize(
    ("alias", "kind"),
    [("ipp", "IPPool"), ("POOLS", "IPPool"), ("no", "Node"), ("wep", "WorkloadEndpoint"),
     ("hep", "HostEndpoint"), ("pro", "Profile"), ("policy", "NetworkPolicy"),
     ("np", "NetworkPolicy"), ("pols", "NetworkPolicy"), ("gnp", "GlobalNetworkPolicy"),
     ("netsets", "NetworkSet"), ("gnetsets", "GlobalNetworkSet"),
     ("felixconfig", "FelixConfiguration"), ("bgpconfigs", "BGPConfiguration"),
     ("bp", "BGPPeer"), ("reservation", "IPReservation"), ("tiers", "Tier"),
     ("clusterinfo", "ClusterInformation"), ("kubecontrollersconfig",
                                             "KubeControllersConfiguration"),
     ("IPPool", "IPPool")],
)  # fmt: skip
def test_calicoctl_aliases(alias: str, kind: str) -> None:
    assert lookup_kind(alias).kind == kind


def test_unknown_kind_is_named() -> None:
    with pytest.raises(ValidationError) as e:
        lookup_kind("pod")
    assert str(e.value) == "kind: resource type 'pod' is not supported"


def row(kind: str, resource: dict[str, Any], *, wide: bool = False, **kw: Any) -> list[str]:
    info = KINDS[kind]
    return info.row(resource, info.headings(wide=wide), **kw)


def res(kind: str, spec: dict[str, Any], name: str = "x", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": kind,
            "metadata": {"name": name, **meta}, "spec": spec}  # fmt: skip


def test_ippool_columns() -> None:
    info = KINDS["IPPool"]
    assert info.headings() == ("NAME", "CIDR", "SELECTOR")
    assert info.headings(wide=True) == (
        "NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR"
    )  # fmt: skip
    pool = validate(res("IPPool", {"cidr": "192.168.0.0/16", "natOutgoing": True,
                                   "ipipMode": "Always"}, name="default-ipv4-ippool"))
    assert row("IPPool", dict(pool), wide=True) == [
        "default-ipv4-ippool", "192.168.0.0/16", "true", "Always", "Never", "false", "false",
        "all()",
    ]  # fmt: skip
    # A stored pool without modes (written before defaults) still prints Never.
    assert row("IPPool", res("IPPool", {"cidr": "10.0.0.0/8"}), wide=True)[3:5] == [
        "Never", "Never"
    ]


def test_node_columns_show_inherited_as_number() -> None:
    assert KINDS["Node"].headings() == ("NAME",)
    assert KINDS["Node"].headings(wide=True) == ("NAME", "ASN", "IPV4", "IPV6")
    node = res("Node", {"bgp": {"ipv4Address": "10.0.0.1/24"}}, name="n1")
    assert row("Node", node, wide=True) == ["n1", "(64512)", "10.0.0.1/24", ""]
    assert row("Node", node, wide=True, global_as_number="63400")[1] == "(63400)"
    own = res("Node", {"bgp": {"asNumber": 65001, "ipv6Address": "fd00::1/64"}}, name="n2")
    assert row("Node", own, wide=True) == ["n2", "65001", "", "fd00::1/64"]
    assert row("Node", res("Node", {}, name="n3"), wide=True) == ["n3", "", "", ""]


def test_bgp_peer_and_config_columns() -> None:
    assert KINDS["BGPPeer"].headings() == ("NAME", "PEERIP", "NODE", "ASN")
    assert row("BGPPeer", res("BGPPeer", {"peerIP": "10.0.0.1", "asNumber": 64512})) == [
        "x", "10.0.0.1", "(global)", "64512"
    ]
    assert row("BGPPeer", res("BGPPeer", {"nodeSelector": "all()", "peerSelector": "rr"})) == [
        "x", "", "all()", "0"
    ]
    assert row("BGPPeer", res("BGPPeer", {"node": "n1", "peerIP": "1.1.1.1", "asNumber": 1}))[
        2
    ] == "n1"
    cfg = KINDS["BGPConfiguration"]
    assert cfg.headings() == ("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER")
    assert row("BGPConfiguration", res("BGPConfiguration", {"logSeverityScreen": "Info",
                                                            "nodeToNodeMeshEnabled": False,
                                                            "asNumber": 63400},
                                       name="default")) == ["default", "Info", "false", "63400"]
    assert row("BGPConfiguration", res("BGPConfiguration", {}, name="default")) == [
        "default", "", "-", "-"
    ]


def test_workload_endpoint_columns() -> None:
    info = KINDS["WorkloadEndpoint"]
    assert info.headings() == ("WORKLOAD", "NODE", "NETWORKS", "INTERFACE")
    assert info.headings(wide=True) == (
        "NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "PROFILES", "NATS"
    )
    assert info.headings(all_namespaces=True)[0] == "NAMESPACE"
    wep = res("WorkloadEndpoint", {
        "node": "n1", "orchestrator": "k8s", "pod": "web", "endpoint": "eth0",
        "ipNetworks": ["10.0.0.5/32", "fd00::5/128"], "interfaceName": "cali1",
        "profiles": ["kns.dev", "ksa.dev.default"],
        "ipNATs": [{"internalIP": "10.0.0.5", "externalIP": "1.2.3.4"}],
    }, name="n1-k8s-web-eth0", namespace="dev")  # fmt: skip
    assert row("WorkloadEndpoint", wep, wide=True) == [
        "n1-k8s-web-eth0", "web", "n1", "10.0.0.5/32,fd00::5/128", "cali1",
        "kns.dev,ksa.dev.default", "{10.0.0.5 1.2.3.4}",
    ]  # fmt: skip
    assert info.row(wep, info.headings(all_namespaces=True))[0] == "dev"


def test_policy_columns_print_go_floats_and_nil_orders() -> None:
    for kind in ("NetworkPolicy", "GlobalNetworkPolicy"):
        assert KINDS[kind].headings() == ("NAME", "TIER")
        assert KINDS[kind].headings(wide=True) == ("NAME", "TIER", "ORDER", "SELECTOR")
    pol = res("NetworkPolicy", {"tier": "default", "order": 100, "selector": "app == 'x'"})
    assert row("NetworkPolicy", pol, wide=True) == ["x", "default", "100", "app == 'x'"]
    assert row("NetworkPolicy", res("NetworkPolicy", {"tier": "t"}), wide=True)[2] == "<nil>"
    assert row("Tier", res("Tier", {"order": 1000000})) == ["x", "1e+06"]
    assert KINDS["GlobalNetworkPolicy"].headings(all_namespaces=True)[0] == "NAME"


def test_other_kind_columns() -> None:
    hep = res("HostEndpoint", {"node": "n1", "interfaceName": "eth0",
                               "expectedIPs": ["10.0.0.1", "10.0.0.2"], "profiles": ["a"]})
    assert row("HostEndpoint", hep) == ["x", "n1"]
    assert row("HostEndpoint", hep, wide=True) == ["x", "n1", "eth0", "10.0.0.1,10.0.0.2", "a"]
    prof = res("Profile", {"labelsToApply": {"z": "1", "a": "2"}})
    assert row("Profile", prof, wide=True) == ["x", "a=2,z=1"]
    nets = [f"10.0.{i}.0/24" for i in range(20)]
    cell = row("GlobalNetworkSet", res("GlobalNetworkSet", {"nets": nets}), wide=True)[1]
    assert len(cell) == 80 and cell.endswith("...") and cell.startswith("10.0.0.0/24,10.0.1.0")
    short = row("NetworkSet", res("NetworkSet", {"nets": nets[:2]}), wide=True)[1]
    assert short == "10.0.0.0/24,10.0.1.0/24"
    assert row("IPReservation", res("IPReservation", {"reservedCIDRs": ["10.0.0.0/30"]}),
               wide=True) == ["x", "10.0.0.0/30"]  # fmt: skip
    assert row("ClusterInformation", res("ClusterInformation", {
        "clusterGUID": "g", "clusterType": "k8s,bgp", "calicoVersion": "v3.30.0",
        "datastoreReady": True}, name="default")) == [
        "default", "g", "k8s,bgp", "v3.30.0", "true"]  # fmt: skip
    assert row("ClusterInformation", res("ClusterInformation", {}, name="default"))[4] == "<nil>"
    assert row("FelixConfiguration", res("FelixConfiguration", {}, name="default")) == ["default"]


def test_unknown_heading() -> None:
    with pytest.raises(ValidationError) as e:
        KINDS["IPPool"].row(res("IPPool", {}), ["NAME", "COLOUR"])
    assert "COLOUR" in str(e.value) and "CIDR" in str(e.value)
    assert KINDS["IPPool"].row(res("IPPool", {}), ["ASSIGNMENTMODE"]) == ["Automatic"]


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (1000, "1000"), (100.5, "100.5"), (123456, "123456"), (1e6, "1e+06"),
     (1234567, "1.234567e+06"), (0.0001, "0.0001"), (0.00001, "1e-05"), (-3, "-3"),
     (0.5, "0.5"), (1e21, "1e+21"), (-2.5e-7, "-2.5e-07")],
)  # fmt: skip
def test_go_float_formatting(value: float, text: str) -> None:
    assert go_float(value) == text


def test_join() -> None:
    assert join(None) == ""
    assert join(["a", "b"]) == "a,b"
    assert join({"b": "1", "a": True}) == "a=true,b=1"
    assert join(["abcdef", "ghijkl"], ",", 8) == "abcde..."
