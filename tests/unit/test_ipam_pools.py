"""Pool selection, the seeded block walk and IPReservations."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcalico.errors import ResourceExhaustedError, ValidationError
from services.ipam.pools import (
    Pool,
    Reservations,
    block_walk,
    default_match,
    fnv1_32,
    select_pools,
    walk_order,
)


def pool(name: str, cidr: str, **spec: object) -> Pool:
    return Pool.from_resource({"metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})


def never(selector: str, labels: Mapping[str, str]) -> bool:
    """A selector matcher that rejects everything but all()."""
    return selector == "all()"


def test_defaults_from_resource() -> None:
    p = pool("p", "192.168.0.0/16")
    assert p.block_size == 26 and p.allowed_uses == {"Workload", "Tunnel"}
    assert p.num_blocks == 1024 and p.node_selector == "all()"
    assert pool("v6", "fd00::/64").block_size == 122
    with pytest.raises(ValidationError):
        pool("bad", "not-a-cidr")


def test_requested_by_name_or_normalised_cidr_ignores_node_selector() -> None:
    pools = [pool("a", "10.0.0.0/24", nodeSelector="zone == 'b'"), pool("v6", "2001:db8::/120")]
    got = select_pools(pools, 4, ["10.0.0.0/24"], "n", {}, "Workload", never)
    assert [p.name for p in got] == ["a"]
    got = select_pools(pools, 6, ["2001:db8::1/120"], "n", {}, "Workload")
    assert [p.name for p in got] == ["v6"]
    assert select_pools(pools, 4, ["a", "a"], "n", {}, "Workload", never)[0].name == "a"


def test_requested_missing_or_disabled_pool_is_named() -> None:
    pools = [pool("a", "10.0.0.0/24", disabled=True)]
    with pytest.raises(ValidationError, match=r"0/24\) does not exist, or is not enabled"):
        select_pools(pools, 4, ["10.0.0.0/24"], "n", {}, "Workload")
    with pytest.raises(ValidationError, match="nope"):
        select_pools(pools, 4, ["nope"], "n", {}, "Workload")


def test_auto_selection_uses_selector_disabled_manual_and_uses() -> None:
    pools = [
        pool("all", "10.0.0.0/24"),
        pool("zone-b", "10.0.1.0/24", nodeSelector="zone == 'b'"),
        pool("off", "10.0.2.0/24", disabled=True),
        pool("manual", "10.0.3.0/24", assignmentMode="Manual"),
        pool("tun", "10.0.4.0/24", allowedUses=["Tunnel"]),
    ]
    got = select_pools(pools, 4, [], "n", {"zone": "a"}, "Workload")
    assert [p.name for p in got] == ["all"]
    got = select_pools(pools, 4, [], "n", {"zone": "b"}, "Tunnel")
    assert [p.name for p in got] == ["all", "zone-b", "tun"]
    got = select_pools(pools, 4, [], "n", {"zone": "b"}, "Workload", never)
    assert [p.name for p in got] == ["all"]
    with pytest.raises(ResourceExhaustedError, match="no enabled IPv6 pool selects node n"):
        select_pools(pools, 6, [], "n", {}, "Workload")
    with pytest.raises(ResourceExhaustedError, match="allows use Workload"):
        select_pools([pools[4]], 4, [], "n", {}, "Workload")


def test_default_match_uses_calico_selectors() -> None:
    assert default_match("", {}) and default_match("all()", {})
    assert default_match("zone == 'a'", {"zone": "a"})
    assert not default_match("zone == 'a'", {"zone": "b"})
    assert default_match("zone != 'a'", {})


def test_fnv1_matches_go_hash_fnv_new32() -> None:
    assert fnv1_32(b"") == 0x811C9DC5
    assert fnv1_32(b"a") == 0x050C5D7E
    assert fnv1_32(b"foobar") == 0x31F0B262


@given(st.integers(20, 26), st.text(min_size=1, max_size=20))
def test_block_walk_visits_every_block_once_from_a_seeded_start(size: int, host: str) -> None:
    p = pool("p", "10.0.0.0/20", blockSize=size)
    walk = list(block_walk(p, host))
    assert len(walk) == p.num_blocks == len(set(walk))
    assert all(b.prefixlen == size and b.subnet_of(p.cidr) for b in walk)  # type: ignore[arg-type]
    assert walk == list(block_walk(p, host))  # same node, same order
    some = walk[::3]
    assert walk_order(p, host, reversed(some)) == some


def test_nodes_start_in_different_places() -> None:
    p = pool("p", "192.168.0.0/16")
    starts = {next(iter(block_walk(p, f"node-{i}"))) for i in range(8)}
    assert len(starts) > 4


def test_reservations() -> None:
    r = Reservations.from_resources(
        [{"spec": {"reservedCIDRs": ["10.0.0.0/30", "10.0.0.2/31", "10.0.1.0/24", "bad"]}}]
    )
    block = ipaddress.ip_network("10.0.0.0/26")
    pred = r.predicate(block)
    assert pred is not None and [o for o in range(8) if pred(o)] == [0, 1, 2, 3]
    assert r.predicate(ipaddress.ip_network("10.0.0.64/26")) is None
    assert r.covers(ipaddress.ip_network("10.0.1.64/26"))
    assert not r.covers(block)
    assert r.matches(ipaddress.ip_address("10.0.1.9"))
    assert r.count_in(ipaddress.ip_network("10.0.0.0/23")) == 4 + 256
    assert not Reservations()


@given(
    st.sampled_from([4, 6]),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
def test_contains_block_agrees_with_ipaddress(
    version: int, pool_bits: int, pool_len: int, block_bits: int, block_len: int
) -> None:
    net = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    width = 32 if version == 4 else 128
    pool_net = net((pool_bits % 2**width, pool_len % (width + 1)), strict=False)
    block = net((block_bits % 2**width, block_len % (width + 1)), strict=False)
    p = Pool(name="p", cidr=pool_net, block_size=max(pool_net.prefixlen, width - 6))
    assert p.contains_block(block) == block.subnet_of(pool_net)  # type: ignore[arg-type]
    other = ipaddress.ip_network("fd00::/122" if version == 4 else "10.0.0.0/26")
    assert not p.contains_block(other)  # the other family is never inside
