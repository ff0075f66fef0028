"""etcd key formatting and parsing: Calico's layout, round trips, and rejection of foreign keys."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcalico import keys
from libcalico.errors import ValidationError
from libcalico.model import KINDS

# Key segments: anything without '/' (names, namespaces, hosts, handle IDs).
segment = st.text(
    alphabet=st.characters(exclude_characters="/", codec="utf-8"),
    min_size=1,
    max_size=40,
)
networks = st.one_of(
    st.builds(
        lambda addr, plen: ipaddress.ip_network(f"{ipaddress.IPv4Address(addr)}/{plen}", False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    st.builds(
        lambda addr, plen: ipaddress.ip_network(f"{ipaddress.IPv6Address(addr)}/{plen}", False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
)


@pytest.mark.parametrize(
    ("kind", "name", "namespace", "key"),
    [
        ("IPPool", "default-ipv4-ippool", None,
         "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"),
        ("Node", "master01", None, "/calico/resources/v3/projectcalico.org/nodes/master01"),
        ("NetworkPolicy", "allow-dns", "kube-system",
         "/calico/resources/v3/projectcalico.org/networkpolicies/kube-system/allow-dns"),
        ("WorkloadEndpoint", "node1-k8s-pod--1-eth0", "default",
         "/calico/resources/v3/projectcalico.org/workloadendpoints/default/node1-k8s-pod--1-eth0"),
        ("KubeControllersConfiguration", "default", None,
         "/calico/resources/v3/projectcalico.org/kubecontrollersconfigurations/default"),
        ("ippool", "p", None, "/calico/resources/v3/projectcalico.org/ippools/p"),  # an alias
    ],
)  # fmt: skip
def test_resource_keys_follow_calicos_layout(
    kind: str, name: str, namespace: str | None, key: str
) -> None:
    assert keys.resource_key(kind, name, namespace) == key


def test_every_kind_round_trips_through_its_plural() -> None:
    for info in KINDS.values():
        ns = "ns1" if info.namespaced else None
        key = keys.resource_key(info.kind, "n", ns)
        assert key.startswith(keys.resource_prefix(info.kind, ns))
        assert keys.parse_resource_key(key) == (info.kind, ns, "n")


@given(kind=st.sampled_from(sorted(KINDS)), name=segment, namespace=segment)
def test_resource_key_round_trip(kind: str, name: str, namespace: str) -> None:
    ns = namespace if KINDS[kind].namespaced else None
    assert keys.parse_resource_key(keys.resource_key(kind, name, ns)) == (kind, ns, name)


def test_prefixes_end_in_a_slash_so_reads_do_not_spill_over() -> None:
    assert keys.resource_prefix("NetworkPolicy") == (
        "/calico/resources/v3/projectcalico.org/networkpolicies/"
    )
    assert keys.resource_prefix("NetworkPolicy", "dev") == (
        "/calico/resources/v3/projectcalico.org/networkpolicies/dev/"
    )


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: keys.resource_key("NetworkPolicy", "p"), "namespace"),
        (lambda: keys.resource_key("IPPool", "p", "default"), "namespace"),
        (lambda: keys.resource_key("IPPool", "a/b"), "name"),
        (lambda: keys.resource_key("IPPool", ""), "name"),
        (lambda: keys.resource_key("Pool2", "p"), "kind"),
        (lambda: keys.resource_prefix("IPPool", "default"), "namespace"),
    ],
)
def test_bad_resource_keys_are_rejected(call: object, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        call()  # type: ignore[operator]
    assert e.value.field == field


@pytest.mark.parametrize(
    "key",
    [
        "/calico/resources/v3/projectcalico.org/ippools",
        "/calico/resources/v3/projectcalico.org/ippools/",
        "/calico/resources/v3/projectcalico.org/ippools/ns/p",  # cluster-scoped kind with a ns
        "/calico/resources/v3/projectcalico.org/networkpolicies/p",  # namespaced kind without
        "/calico/resources/v3/projectcalico.org/bgpfilters/f",  # a kind we do not serve
        "/calico/resources/v3/projectcalico.org/networkpolicies/ns//p",
        "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26",
        "/calico/v1/policy/tier/default/policy/p",
    ],
)
def test_foreign_keys_parse_to_none(key: str) -> None:
    assert keys.parse_resource_key(key) is None


def test_ipam_keys_match_calico() -> None:
    assert keys.block_key("10.65.79.0/26") == "/calico/ipam/v2/assignment/ipv4/block/10.65.79.0-26"
    assert keys.block_key("fd00:1::/122") == "/calico/ipam/v2/assignment/ipv6/block/fd00:1::-122"
    assert keys.affinity_key("node-1", "10.65.79.0/26") == (
        "/calico/ipam/v2/host/node-1/ipv4/block/10.65.79.0-26"
    )
    assert keys.handle_key("k8s-pod-network.abc123") == (
        "/calico/ipam/v2/handle/k8s-pod-network.abc123"
    )
    assert keys.IPAM_CONFIG_KEY == "/calico/ipam/v2/config"
    assert keys.block_prefix(4) == "/calico/ipam/v2/assignment/ipv4/block/"
    assert keys.affinity_prefix("node-1") == "/calico/ipam/v2/host/node-1/"
    assert keys.affinity_prefix("node-1", 6) == "/calico/ipam/v2/host/node-1/ipv6/block/"
    assert keys.felix_status_key("node-1") == "/calico/felix/v2/no-region/host/node-1/status"


def test_block_keys_are_canonical_and_reject_host_bits() -> None:
    net = ipaddress.ip_network("fd00:0:0:0::/122")
    assert keys.block_key(net) == "/calico/ipam/v2/assignment/ipv6/block/fd00::-122"
    with pytest.raises(ValidationError):
        keys.block_key("10.65.79.1/26")
    # Only the spelling we write parses back: a non-canonical address is not our key.
    assert keys.parse_block_key("/calico/ipam/v2/assignment/ipv6/block/fd00:0::-122") is None
    assert keys.parse_block_key("/calico/ipam/v2/assignment/ipv6/block/10.0.0.0-26") is None
    assert keys.parse_block_key("/calico/ipam/v2/assignment/ipv4/block/10.0.0.0") is None


@given(networks)
def test_block_key_round_trip(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    assert keys.parse_block_key(keys.block_key(net)) == net
    assert keys.block_key(net).startswith(keys.block_prefix(net.version))


@given(segment, networks)
def test_affinity_key_round_trip(
    host: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> None:
    key = keys.affinity_key(host, net)
    assert keys.parse_affinity_key(key) == (host, net)
    assert key.startswith(keys.affinity_prefix(host, net.version))


@given(segment)
def test_handle_and_felix_status_round_trip(name: str) -> None:
    assert keys.parse_handle_key(keys.handle_key(name)) == name
    assert keys.parse_felix_status_key(keys.felix_status_key(name)) == (name, "no-region")


def test_ipam_parsers_reject_other_keys() -> None:
    assert keys.parse_affinity_key("/calico/ipam/v2/host/node-1") is None
    assert keys.parse_affinity_key("/calico/ipam/v2/host/node-1/ipv4/block/junk") is None
    assert keys.parse_handle_key("/calico/ipam/v2/handle/") is None
    assert keys.parse_handle_key(keys.IPAM_CONFIG_KEY) is None
    assert keys.parse_felix_status_key("/calico/felix/v2/no-region/host/n/last_seen") is None
