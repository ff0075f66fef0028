"""The driver and its managers against the hand-written kernel fakes (no root needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from libcalico.api.felix import felixbackend_pb2 as fb
from services.dataplane import messages as m
from services.dataplane.driver import Driver, DriverSettings
from services.dataplane.flavors import build_driver
from services.dataplane.owners.netlink import RTN_BLACKHOLE, RTPROT_CALICO, Route
from services.dataplane.status import ListSink
from services.dataplane.stream import QueueSource
from services.dataplane.testing import FakeNetlink, FakeRunner, FakeSysctls
from services.policy import examples as ex

KNS = "kns.default"
ME, OTHER = "node-1", "node-2"
IFACE = "cali1111111111a"


def make(tmp_path: Path, flavor: str = "iptables", nl: FakeNetlink | None = None,
         **kw: object) -> tuple[Driver, FakeRunner, FakeNetlink, ListSink]:
    runner, sink = FakeRunner(), ListSink()
    if nl is None:
        nl = FakeNetlink()
        nl.add_link("eth0", addresses=["10.90.0.1/24"], mtu=1500)
    settings = DriverSettings(node=ME, flavor=flavor, retry_min=0.01, retry_max=0.05)
    for k, v in kw.items():
        setattr(settings, k, v)
    d = build_driver(settings, sink=sink, runner=runner, nl=nl, sysctls=FakeSysctls(),
                     mtu_file=tmp_path / "mtu", ipv6=False)
    return d, runner, nl, sink


async def apply(d: Driver) -> bool:
    """One apply pass, with the reports it queued delivered to the sink."""
    ok = await d.apply_once()
    await d.reporter.flush()
    return ok


def snapshot() -> list[fb.ToDataplane]:
    return [
        m.config(), m.encap(vxlan=True),
        m.pool("p", "10.244.0.0/16", vxlan="Always", masquerade=True),
        ex.host(ME, ipv4="10.90.0.1"), ex.host(OTHER, ipv4="10.90.0.2"),
        m.vtep(ME, "10.244.1.0", "10.90.0.1"), m.vtep(OTHER, "10.244.2.0", "10.90.0.2"),
        m.local_block("10.244.1.0/26", ME, "10.90.0.1"),
        m.remote_block("10.244.2.0/26", OTHER, "10.90.0.2"),
        ex.profile(KNS, inbound=[ex.rule("allow")], outbound=[ex.rule("allow")]),
        ex.wep(IFACE, "default/pod-a", ipv4=["10.244.1.2/32"], profiles=[KNS]),
    ]


async def test_nothing_is_written_before_in_sync(tmp_path: Path) -> None:
    d, runner, nl, sink = make(tmp_path)
    d.on_batch(snapshot())
    assert not await apply(d)
    assert runner.calls == [] and nl.writes == 0
    assert not (tmp_path / "mtu").exists()
    assert sink.sent == []


async def test_in_sync_programs_everything_in_felix_order(tmp_path: Path) -> None:
    d, runner, nl, sink = make(tmp_path)
    nl.add_link(IFACE, mac="ee:ee:ee:ee:ee:ee")
    d.on_batch([*snapshot(), m.in_sync()])
    assert await apply(d)
    routes = nl.routes_by_dst()
    assert routes["10.244.1.2/32"].ifindex == nl.link(IFACE).index  # type: ignore[union-attr]
    assert routes["10.244.1.0/26"].kind == RTN_BLACKHOLE
    vx = nl.link("vxlan.calico")
    assert vx is not None and vx.vxlan_attr("vni") == 4096 and vx.mtu == 1450
    remote = routes["10.244.2.0/26"]
    assert (remote.gateway, remote.onlink, remote.ifindex) == ("10.244.2.0", True, vx.index)
    assert next(iter(nl.neigh.values())).lladdr == m.vtep_mac(OTHER)
    assert next(iter(nl.fdb_entries.values())).dst == "10.90.0.2"
    # Sets before rules, set deletes after; one restore per changed table.
    tools = runner.tools()
    first_restore = next(i for i, t in enumerate(tools) if t.endswith("restore")
                         and t.startswith("iptables"))
    assert tools.index("ipset") < first_restore
    restore = "".join(runner.inputs("iptables-nft-restore"))
    assert "-A cali-from-wl-dispatch" in restore and IFACE in restore
    assert "cali40masq-ipam-pools" in "".join(runner.inputs("ipset"))
    assert (tmp_path / "mtu").read_text().strip() == "1450"
    assert sink.in_sync_reported
    assert sink.endpoint_statuses() == {"default/pod-a": "up"}


async def test_sweep_after_in_sync_removes_only_ours(tmp_path: Path) -> None:
    d, runner, nl, _ = make(tmp_path)
    eth0 = nl.link("eth0")
    assert eth0 is not None
    nl.route_table[(254, "10.99.0.0/26")] = Route("10.99.0.0/26", kind=RTN_BLACKHOLE)
    nl.route_table[(254, "192.0.2.0/24")] = Route("192.0.2.0/24", ifindex=eth0.index,
                                                   gateway="10.90.0.254", proto=4)
    runner.kernel_text["iptables-nft-save"] = (
        "*filter\n:INPUT ACCEPT [0:0]\n:cali-stale - [0:0]\n:theirs - [0:0]\n"
        '-A INPUT -m comment --comment "cali:AAAAAAAAAAAAAAAA" -j cali-stale\n'
        "-A INPUT -j theirs\nCOMMIT\n")
    runner.kernel_text["ipset"] = "create cali40old hash:ip family inet\ncreate kube-x hash:ip\n"
    d.on_batch(snapshot())
    await apply(d)
    assert "10.99.0.0/26" in nl.routes_by_dst()  # untouched before in-sync
    d.on_batch([m.in_sync()])
    assert await apply(d)
    routes = nl.routes_by_dst()
    assert "10.99.0.0/26" not in routes and "192.0.2.0/24" in routes
    filter_restores = [t for t in runner.inputs("iptables-nft-restore") if "*filter" in t]
    assert any("-X cali-stale" in t for t in filter_restores)
    assert all("theirs" not in t for t in filter_restores)
    assert any("destroy cali40old" in t for t in runner.inputs("ipset"))
    assert not any("kube-x" in t for t in runner.inputs("ipset"))


async def test_failed_write_is_retried_with_backoff_and_never_kills_the_driver(
    tmp_path: Path,
) -> None:
    d, runner, nl, sink = make(tmp_path)
    runner.fail["iptables-nft-restore"] = 3
    nl.fail_routes = 1
    source = QueueSource()
    task = asyncio.create_task(d.run(source, watch_links=False))
    source.put([*snapshot(), m.in_sync()])
    await asyncio.sleep(0)
    await d.wait_applied(timeout=5)
    assert d.stats.failures >= 1 and not task.done()
    assert "10.244.1.0/26" in nl.routes_by_dst()
    assert sink.in_sync_reported
    source.close()
    await asyncio.wait_for(task, 5)


async def test_endpoint_lifecycle_routes_status_conntrack(tmp_path: Path) -> None:
    d, runner, nl, sink = make(tmp_path)
    d.on_batch([*snapshot(), m.in_sync()])
    await apply(d)
    # The interface does not exist yet: the route waits and the endpoint is down.
    assert "10.244.1.2/32" not in nl.routes_by_dst()
    assert sink.endpoint_statuses() == {"default/pod-a": "down"}
    link = nl.add_link(IFACE, mac="ee:ee:ee:ee:ee:ee")
    d.on_link_event(link, deleted=False)
    await apply(d)
    assert nl.routes_by_dst()["10.244.1.2/32"].ifindex == link.index
    assert sink.endpoint_statuses() == {"default/pod-a": "up"}
    sysctls = d.endpoints._sysctls
    assert isinstance(sysctls, FakeSysctls)
    assert sysctls.values[f"/proc/sys/net/ipv4/conf/{IFACE}/proxy_arp"] == "1"

    d.on_batch([ex.wep_remove(IFACE, "default/pod-a")])
    await apply(d)
    assert "10.244.1.2/32" not in nl.routes_by_dst()
    assert sink.endpoint_statuses() == {}
    ct = [argv for argv, _ in runner.calls if argv[0] == "conntrack"]
    assert ("conntrack", "--family", "ipv4", "--delete", "--orig-src", "10.244.1.2") in ct
    assert ("conntrack", "--family", "ipv4", "--delete", "--reply-src", "10.244.1.2") in ct


async def test_new_generation_waits_for_in_sync_then_sweeps_what_vanished(
    tmp_path: Path,
) -> None:
    d, _runner, nl, _ = make(tmp_path)
    nl.add_link(IFACE)
    nl.add_link("cali2222222222b")
    d.on_batch([*snapshot(),
                ex.wep("cali2222222222b", "default/pod-b", ipv4=["10.244.1.3/32"],
                       profiles=[KNS]), m.in_sync()])
    await apply(d)
    assert "10.244.1.3/32" in nl.routes_by_dst()
    d.new_generation()
    d.on_batch(snapshot())  # pod-b was deleted while the stream was down
    writes = nl.writes
    assert not await apply(d)
    assert nl.writes == writes and "10.244.1.3/32" in nl.routes_by_dst()
    d.on_batch([m.in_sync()])
    assert await apply(d)
    routes = nl.routes_by_dst()
    assert "10.244.1.3/32" not in routes
    assert {"10.244.1.2/32", "10.244.2.0/26", "10.244.1.0/26"} <= set(routes)


def kernel_save(d: Driver, v: int, table: str) -> str:
    """iptables-save text of what ``d`` programmed into one table (for a second driver)."""
    t = d.policy.owners.tables[(v, table)]
    lines = [f"*{table}"]
    for kchain in ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"):
        lines.append(f":{kchain} ACCEPT [0:0]")
    names = sorted(t.chain_names())
    lines += [f":{n} - [0:0]" for n in names]
    for kchain, hooks in t._hooks.items():
        lines += [f"-A {kchain} {b}" for b in (*hooks.insert, *hooks.append)]
    for n in names:
        lines += [f"-A {n} {b}" for b in t.desired_chain(n) or ()]
    return "\n".join([*lines, "COMMIT", ""])


async def test_a_restarted_driver_rewrites_nothing_that_is_right(tmp_path: Path) -> None:
    d1, _, nl, _ = make(tmp_path)
    nl.add_link(IFACE)
    d1.on_batch([*snapshot(), m.in_sync()])
    assert await apply(d1)
    d2, runner2, _, _ = make(tmp_path, nl=nl)  # a new process on the same kernel
    runner2.kernel_text["iptables-nft-save"] = kernel_save(d1, 4, "filter")
    d2.on_batch([*snapshot(), m.in_sync()])
    writes = nl.writes
    assert await apply(d2)
    filter_restores = [t for t in runner2.inputs("iptables-nft-restore") if "*filter" in t]
    assert filter_restores == []
    assert nl.writes == writes  # routes, device, neighbours: all already right


async def test_vxlan_cross_subnet_and_vtep_removal(tmp_path: Path) -> None:
    d, _, nl, _ = make(tmp_path)
    d.on_batch([*snapshot(), m.remote_block("10.244.3.0/26", "node-3", "10.90.0.3",
                                            same_subnet=True), m.in_sync()])
    await apply(d)
    routes = nl.routes_by_dst()
    direct = routes["10.244.3.0/26"]
    eth0 = nl.link("eth0")
    assert eth0 is not None
    assert (direct.gateway, direct.ifindex, direct.onlink, direct.proto) == (
        "10.90.0.3", eth0.index, False, RTPROT_CALICO)
    d.on_batch([m.route_remove("10.244.2.0/26"), m.vtep_remove(OTHER)])
    await apply(d)
    assert "10.244.2.0/26" not in nl.routes_by_dst()
    assert nl.neigh == {} and nl.fdb_entries == {}


async def test_ipip_device_and_routes(tmp_path: Path) -> None:
    d, _, nl, _ = make(tmp_path)
    d.on_batch([
        m.config(IpInIpTunnelAddr="10.244.1.1"), m.encap(ipip=True),
        m.pool("p", "10.244.0.0/16", ipip="Always"), ex.host(ME, ipv4="10.90.0.1"),
        m.local_block("10.244.1.0/26", ME, "10.90.0.1", pool_type=m.IPIP),
        m.remote_block("10.244.2.0/26", OTHER, "10.90.0.2", pool_type=m.IPIP),
        m.remote_block("10.244.3.0/26", "node-3", "10.90.0.3", pool_type=m.IPIP,
                       same_subnet=True),
        m.in_sync(),
    ])
    assert await apply(d)
    tunl = nl.link("tunl0")
    assert tunl is not None and tunl.kind == "ipip" and tunl.mtu == 1480 and tunl.up
    assert nl.addrs[tunl.index] == {"10.244.1.1/32"}
    routes = nl.routes_by_dst()
    r = routes["10.244.2.0/26"]
    assert (r.gateway, r.ifindex, r.onlink) == ("10.90.0.2", tunl.index, True)
    assert routes["10.244.3.0/26"].ifindex == nl.link("eth0").index  # type: ignore[union-attr]
    assert routes["10.244.1.0/26"].kind == RTN_BLACKHOLE
    assert (tmp_path / "mtu").read_text().strip() == "1480"


async def test_ipip_without_the_kernel_module_is_retried_not_fatal(tmp_path: Path) -> None:
    d, _, nl, _ = make(tmp_path)
    nl.supported_kinds = ("vxlan",)
    d.on_batch([m.encap(ipip=True), m.pool("p", "10.244.0.0/16", ipip="Always"),
                m.remote_block("10.244.2.0/26", OTHER, "10.90.0.2", pool_type=m.IPIP),
                m.in_sync()])
    assert not await apply(d)
    assert "devices" in d.stats.last_failed_stages
    # The route waits for tunl0 instead of failing; the device stage is retried.
    assert d.routes.pending_ifaces == {"tunl0"}
    assert nl.routes_by_dst() == {}
    nl.supported_kinds = ("vxlan", "ipip")  # say the module got loaded
    assert await apply(d)
    assert "10.244.2.0/26" in nl.routes_by_dst()


async def test_nftables_flavor_feeds_the_nft_owner_and_sweeps_iptables(tmp_path: Path) -> None:
    d, runner, _, _ = make(tmp_path, flavor="nftables")
    runner.kernel_text["iptables-nft-save"] = (
        "*filter\n:FORWARD ACCEPT [0:0]\n:cali-FORWARD - [0:0]\n"
        '-A FORWARD -m comment --comment "cali:BBBBBBBBBBBBBBBB" -j cali-FORWARD\nCOMMIT\n')
    d.on_batch([*snapshot(), m.in_sync()])
    assert await apply(d)
    script = "".join(runner.inputs("nft"))
    assert "table ip calico {" in script and "chain filter-cali-tw-" + IFACE in script
    restores = [t for t in runner.inputs("iptables-nft-restore") if "*filter" in t]
    assert any("-D FORWARD 1" in t and "-X cali-FORWARD" in t for t in restores)
    assert not any(argv[0] == "ipset" and argv[1] == "restore" and inp and "create" in inp
                   for argv, inp in runner.calls)


@pytest.mark.parametrize("params,expected", [
    ({}, 1450), ({"VXLANMTU": "1400"}, 1400),
])
async def test_mtu_file_follows_encapsulation_and_config(
    tmp_path: Path, params: dict[str, str], expected: int
) -> None:
    d, _, nl, _ = make(tmp_path)
    nl.add_link("eth1", mtu=9000)
    nl.add_link("docker0", mtu=1000)  # not matched by MTUIfacePattern
    d.on_batch([m.config(**params), m.encap(vxlan=True), m.in_sync()])
    await apply(d)
    assert d.mtu.host_mtu == 1500
    assert (tmp_path / "mtu").read_text().strip() == str(expected)


async def test_refresh_marks_owners_for_read_back(tmp_path: Path) -> None:
    d, runner, nl, _ = make(tmp_path, iptables_refresh=0.05, routes_refresh=0.05,
                            ipsets_refresh=0.05)
    nl.add_link(IFACE)
    source = QueueSource()
    task = asyncio.create_task(d.run(source, watch_links=False))
    source.put([*snapshot(), m.in_sync()])
    await asyncio.sleep(0)
    await d.wait_applied(timeout=5)
    del nl.route_table[(254, "10.244.1.2/32")]  # someone deletes a workload route
    saves = runner.tools().count("iptables-nft-save")
    for _ in range(100):
        await asyncio.sleep(0.02)
        if "10.244.1.2/32" in nl.routes_by_dst():
            break
    assert "10.244.1.2/32" in nl.routes_by_dst()
    assert runner.tools().count("iptables-nft-save") > saves
    source.close()
    await asyncio.wait_for(task, 5)


async def test_metrics_follow_applies(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    from services.dataplane.commands import ExecRunner, ToolStats
    from services.dataplane.metrics import observe_driver

    d, _, _, _ = make(tmp_path)
    runner = ExecRunner(stats={"iptables-nft-restore": ToolStats(calls=3, seconds=0.03)})
    observe_driver(d, runner)
    before = REGISTRY.get_sample_value("calico_dataplane_apply_seconds_count") or 0.0
    d.on_batch([*snapshot(), m.in_sync()])
    assert await apply(d)
    assert REGISTRY.get_sample_value("calico_dataplane_apply_seconds_count") == before + 1
    assert REGISTRY.get_sample_value("calico_dataplane_in_sync") == 1
    assert REGISTRY.get_sample_value("calico_dataplane_local_endpoints") == 1
    assert (REGISTRY.get_sample_value("calico_dataplane_exec_total",
                                      {"tool": "iptables-nft-restore"}) or 0) >= 3


async def test_a_new_generation_reports_status_again(tmp_path: Path) -> None:
    """After the stream restarts (perhaps to a new calc_graph that knows nothing), the driver
    re-reports in-sync and every endpoint's status once the new snapshot is applied, and
    reports as removed an endpoint that went while the stream was down."""
    d, _runner, nl, sink = make(tmp_path)
    nl.add_link(IFACE)
    nl.add_link("cali2222222222b")
    d.on_batch([*snapshot(),
                ex.wep("cali2222222222b", "default/pod-b", ipv4=["10.244.1.3/32"],
                       profiles=[KNS]), m.in_sync()])
    await apply(d)
    assert sink.endpoint_statuses() == {"default/pod-a": "up", "default/pod-b": "up"}

    sink.sent.clear()  # what a freshly started calc_graph has heard
    d.new_generation()
    d.on_batch([*snapshot(), m.in_sync()])  # pod-b was deleted meanwhile
    assert await apply(d)
    assert sink.in_sync_reported
    kinds = [msg.WhichOneof("payload") for msg in sink.sent]
    assert "workload_endpoint_status_remove" in kinds
    assert sink.endpoint_statuses() == {"default/pod-a": "up"}
