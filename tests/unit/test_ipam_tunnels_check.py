"""Tunnel addresses on Node resources, and the leak check with release from its report."""

from __future__ import annotations

import json

import pytest

from libcalico.errors import FailedPreconditionError, NotFoundError
from services.ipam import check
from services.ipam.allocator import AutoAssignArgs
from services.ipam.tunnels import IPIP, VXLAN, VXLAN_V6, TunnelAddresses
from tests.unit.test_ipam_allocator import Env, a4, allocated, make_env


def tunnels(env: Env) -> TunnelAddresses:
    return TunnelAddresses(env.alloc, env.rs)


async def node_spec(env: Env, name: str) -> dict[str, object]:
    res = await env.rs.get("Node", name)
    assert res is not None
    spec: dict[str, object] = res["spec"]
    return spec


async def test_ipip_address_allocated_written_and_kept() -> None:
    env = make_env()
    env.node("n1", bgp={"ipv4Address": "192.0.2.1/24"})
    env.pool("ipip", "10.10.0.0/16", ipipMode="Always")
    env.pool("plain", "10.20.0.0/16")
    t = tunnels(env)
    addr = await t.ensure("n1", IPIP)
    assert addr.startswith("10.10.")
    spec = await node_spec(env, "n1")
    assert spec["bgp"] == {"ipv4Address": "192.0.2.1/24", "ipv4IPIPTunnelAddr": addr}
    a = await env.alloc.get_assignment(addr)
    assert a.handle == "ipip-tunnel-addr-n1"
    assert a.attrs == {"node": "n1", "type": "ipipTunnelAddress"}
    assert await t.ensure("n1", IPIP) == addr  # idempotent
    assert await t.ensure("n1", VXLAN) == ""  # no VXLAN pool
    assert "ipv4VXLANTunnelAddr" not in await node_spec(env, "n1")


async def test_unallocated_address_on_node_is_adopted() -> None:
    env = make_env()
    env.pool("vx", "10.10.0.0/16", vxlanMode="CrossSubnet")
    env.node("n1", ipv4VXLANTunnelAddr="10.10.3.3")
    assert await tunnels(env).ensure("n1", VXLAN) == "10.10.3.3"
    assert (await env.alloc.get_assignment("10.10.3.3")).handle == "vxlan-tunnel-addr-n1"


async def test_tunnel_address_outside_eligible_pools_is_replaced_then_released() -> None:
    env = make_env()
    env.pool("old", "10.30.0.0/16")
    env.pool("vx", "10.10.0.0/16", vxlanMode="Always")
    env.node("n1", ipv4VXLANTunnelAddr="10.30.0.9")
    t = tunnels(env)
    addr = await t.ensure("n1", VXLAN)
    assert addr.startswith("10.10.")
    assert (await node_spec(env, "n1"))["ipv4VXLANTunnelAddr"] == addr
    env.pool("vx", "10.10.0.0/16", vxlanMode="Never")  # encapsulation turned off
    assert await t.ensure("n1", VXLAN) == ""
    assert "ipv4VXLANTunnelAddr" not in await node_spec(env, "n1")
    assert not (await env.alloc.get_assignment(addr)).allocated


async def test_vxlan_v6_and_missing_node() -> None:
    env = make_env()
    env.pool("v6", "fd00:10::/112", vxlanMode="Always")
    env.node("n1")
    addr = await tunnels(env).ensure("n1", VXLAN_V6)
    assert addr.startswith("fd00:10::")
    assert (await node_spec(env, "n1"))["ipv6VXLANTunnelAddr"] == addr
    assert await tunnels(env).release("n1", VXLAN_V6) == addr
    with pytest.raises(NotFoundError):
        await tunnels(env).ensure("ghost", IPIP)


def wep(ns: str, name: str, node: str, *ips: str) -> dict[str, object]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"node": node, "ipNetworks": [f"{ip}/32" for ip in ips]},
    }


async def test_check_finds_leaks_and_release_from_report_reclaims_them() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/24", ipipMode="Always")
    env.node("n1")
    cluster_info(env, "guid-1")
    used = (await env.alloc.auto_assign(a4("n1", "net.used"))).ipv4[0].split("/")[0]
    leaked = (await env.alloc.auto_assign(a4("n1", "net.leaked", n=2))).ipv4
    env.rs.put_resource(wep("default", "n1-cni-used-eth0", "n1", used, "10.0.0.200", "172.16.0.1"))
    tun = await tunnels(env).ensure("n1", IPIP)
    # A handle with no addresses (as Calico's two-step write can leave behind).
    env.kv.put_json("/calico/ipam/v2/handle/orphan", {"block": {}, "deleted": False})

    report = await check.check(env.alloc, env.rs)
    s = report.summary
    assert s["allocations"] == 4 and s["workloadIPs"] == 3 and s["nodeTunnelIPs"] == 1
    assert s["allocatedNotInUse"] == 2
    assert s["inUseNotAllocated"] == 1 and report.data["inUseButNotAllocated"] == ["10.0.0.200"]
    assert s["inUseNotInActivePools"] == 1
    assert [h["ID"] for h in report.data["leakedHandles"]] == ["orphan"]
    assert report.problems == 2 + 1 + 1 + 1
    allocs = report.data["allocations"]
    assert allocs[used][0]["owners"] == ["Workload(default/n1-cni-used-eth0)"]
    assert allocs[tun][0]["inUse"] and allocs[tun][0]["type"] == "ipipTunnelAddress"
    for ip in leaked:
        a = allocs[ip.split("/")[0]][0]
        assert a["inUse"] is False and a["handle"] == "net.leaked" and a["sequenceNumber"]

    raw = json.loads(json.dumps(report.data))  # what `-o FILE` writes and --from-report reads
    with pytest.raises(FailedPreconditionError, match="--force"):
        await check.release_from_report(env.alloc, env.rs, raw)
    cluster_info(env, "elsewhere", locked=True)
    with pytest.raises(FailedPreconditionError, match="another cluster"):
        await check.release_from_report(env.alloc, env.rs, raw, force=True)
    cluster_info(env, "guid-1", locked=True)  # locking is a new ClusterInformation revision
    with pytest.raises(FailedPreconditionError, match="stale"):
        await check.release_from_report(env.alloc, env.rs, raw)  # made before the lock
    raw = json.loads(json.dumps((await check.check(env.alloc, env.rs)).data))
    assert raw["datastoreLocked"] is True
    result = await check.release_from_report(env.alloc, env.rs, raw)
    assert sorted(result.released) == sorted(ip.split("/")[0] for ip in leaked)
    assert result.handles_deleted == ["orphan"] and not result.warnings
    assert result.leaked_in_report == 2
    after = await check.check(env.alloc, env.rs)
    assert after.summary["allocatedNotInUse"] == 0 and after.summary["handlesWithoutIPs"] == 0
    assert set(allocated(env)) == {used, tun}


def cluster_info(env: Env, guid: str, *, locked: bool = False) -> None:
    env.rs.put_resource({"kind": "ClusterInformation", "metadata": {"name": "default"},
                         "spec": {"clusterGUID": guid, "datastoreReady": not locked}})


async def test_several_reports_release_only_leaks_common_to_all() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/24")
    cluster_info(env, "g")
    a = (await env.alloc.auto_assign(a4("n", "net.a"))).ipv4[0].split("/")[0]
    b = (await env.alloc.auto_assign(a4("n", "net.b"))).ipv4[0].split("/")[0]
    env.kv.put_json("/calico/ipam/v2/handle/orphan", {"block": {}, "deleted": False})
    first = json.loads(json.dumps((await check.check(env.alloc, env.rs)).data))
    env.rs.put_resource(wep("default", "w", "n", a))  # a turns out to be in use after all
    env.kv.put_json("/calico/ipam/v2/handle/orphan", {"block": {}, "deleted": False})  # touched
    second = json.loads(json.dumps((await check.check(env.alloc, env.rs)).data))
    result = await check.release_from_report(env.alloc, env.rs, [first, second], force=True)
    assert result.released == [b] and result.leaked_in_report == 1
    assert result.handles_deleted == [] and result.handles_skipped == []  # revisions differ
    assert result.warnings == ["Data store is not locked. Ignoring due to --force option"]
    assert set(allocated(env)) == {a}


async def test_release_from_report_skips_addresses_reused_since() -> None:
    env = make_env()
    env.pool("p", "10.0.0.0/30", blockSize=30)
    (ip,) = (await env.alloc.auto_assign(a4("n", "old"))).ipv4
    raw = json.loads(json.dumps((await check.check(env.alloc, env.rs)).data))
    await env.alloc.release_by_handle("old")
    # The same address goes to a new workload before the report is acted on.
    for i in range(4):
        await env.alloc.auto_assign(AutoAssignArgs(node="n", num4=1, handle=f"new{i}"))
    result = await check.release_from_report(env.alloc, env.rs, raw, force=True)
    assert result.released == [] and result.skipped == [ip.split("/")[0]]
    assert len(allocated(env)) == 4
