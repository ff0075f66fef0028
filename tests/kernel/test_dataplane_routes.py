"""Route, neighbour and FDB owners against a real kernel, inside a namespace."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from libcalico.netns import run
from services.dataplane.netns_loop import NetnsLoop
from services.dataplane.owners.netlink import PyrouteNetlink
from services.dataplane.owners.routes import (
    FdbOwner,
    LinkCache,
    NeighbourOwner,
    RouteOwner,
    RouteTarget,
)

pytestmark = pytest.mark.kernel


@pytest.fixture
def loop(netns: str) -> Iterator[NetnsLoop]:
    with NetnsLoop(netns) as nl:
        yield nl


def _veth(netns: str, name: str) -> None:
    run(["ip", "-n", netns, "link", "add", name, "type", "veth", "peer", "name", f"p{name[-6:]}"])
    run(["ip", "-n", netns, "link", "set", name, "up"])


def _routes(netns: str) -> dict[str, dict[str, object]]:
    out = json.loads(run(["ip", "-j", "-n", netns, "route", "show", "table", "main"]).stdout)
    return {r["dst"]: r for r in out}


def _owner(loop: NetnsLoop) -> tuple[RouteOwner, PyrouteNetlink]:
    nl = PyrouteNetlink()
    return RouteOwner(nl, LinkCache(nl)), nl


def test_batches_of_routes_added_removed_and_repaired(netns: str, loop: NetnsLoop) -> None:
    _veth(netns, "caliaaaaaaaaaaa")
    _veth(netns, "calibbbbbbbbbbb")
    owner, nl = _owner(loop)
    for i in range(50):
        owner.set_route(f"10.65.0.{i}", RouteTarget.dev(
            "caliaaaaaaaaaaa" if i % 2 else "calibbbbbbbbbbb"))
    owner.set_route("10.65.0.0/26", RouteTarget.blackhole())
    owner.set_route("10.65.1.0/26", RouteTarget.blackhole())
    for i in range(5):  # their veth does not exist (yet): they wait, the batch goes through
        owner.set_route(f"10.65.4.{i}", RouteTarget.dev("calimissing0001"))
    assert loop.run(owner.apply())
    assert owner.stats.last_apply_writes == 52
    assert nl.requests < 10  # dumps and one ip -batch, not 52 netlink requests
    assert owner.pending_ifaces == {"calimissing0001"}
    routes = _routes(netns)
    assert routes["10.65.0.7"]["dev"] == "caliaaaaaaaaaaa"
    assert routes["10.65.0.7"]["scope"] == "link"
    assert routes["10.65.0.0/26"]["type"] == "blackhole"
    assert routes["10.65.0.0/26"]["protocol"] == "80"

    assert not loop.run(owner.apply())  # nothing to do
    owner.mark_resync()
    assert not loop.run(owner.apply())  # the read-back agrees
    for i in range(5):
        owner.remove_route(f"10.65.4.{i}")

    for i in range(40, 50):
        owner.remove_route(f"10.65.0.{i}")
    loop.run(owner.apply())
    routes = _routes(netns)
    assert "10.65.0.45" not in routes and "10.65.0.39" in routes

    run(["ip", "-n", netns, "route", "del", "10.65.0.3"])
    owner.mark_resync()
    loop.run(owner.apply())
    assert "10.65.0.3" in _routes(netns)
    assert owner.stats.repaired == 1 and owner.stats.last_apply_writes == 1
    loop.run(_close(nl))


def test_route_waits_for_its_interface(netns: str, loop: NetnsLoop) -> None:
    owner, nl = _owner(loop)
    owner.set_route("10.65.2.9", RouteTarget.dev("calinotyetthere"))
    loop.run(owner.apply())
    assert owner.pending_ifaces == {"calinotyetthere"}
    assert "10.65.2.9" not in _routes(netns)
    _veth(netns, "calinotyetthere")
    owner.iface_appeared("calinotyetthere")
    loop.run(owner.apply())
    assert _routes(netns)["10.65.2.9"]["dev"] == "calinotyetthere"
    assert owner.in_sync
    loop.run(_close(nl))


def test_only_our_routes_are_swept_and_only_after_in_sync(netns: str, loop: NetnsLoop) -> None:
    _veth(netns, "calicccccccccc1")
    run(["ip", "-n", netns, "route", "add", "blackhole", "10.99.0.0/26", "proto", "80"])
    run(["ip", "-n", netns, "route", "add", "10.99.1.5", "dev", "calicccccccccc1"])
    run(["ip", "-n", netns, "route", "add", "192.0.2.0/24", "via", "10.255.0.254",
         "proto", "static"])
    owner, nl = _owner(loop)
    owner.set_route("10.65.3.1", RouteTarget.dev("calicccccccccc1"))
    loop.run(owner.apply(allow_deletes=False))
    routes = _routes(netns)
    assert {"10.99.0.0/26", "10.99.1.5", "192.0.2.0/24", "10.65.3.1"} <= set(routes)

    owner.mark_resync()
    loop.run(owner.apply(allow_deletes=True))
    routes = _routes(netns)
    assert "10.99.0.0/26" not in routes and "10.99.1.5" not in routes
    assert {"192.0.2.0/24", "10.65.3.1"} <= set(routes)
    loop.run(_close(nl))


def test_vtep_neighbours_and_fdb(netns: str, loop: NetnsLoop) -> None:
    run(["ip", "-n", netns, "link", "add", "vxlan.calico", "type", "vxlan", "id", "4096",
         "dstport", "4789", "local", "10.255.0.1", "dev", "eth0", "nolearning"])
    run(["ip", "-n", netns, "link", "set", "vxlan.calico", "up"])
    nl = PyrouteNetlink()
    links = LinkCache(nl)
    neigh = NeighbourOwner(nl, links, "vxlan.calico")
    fdb = FdbOwner(nl, links, "vxlan.calico")
    neigh.set("10.65.8.0", "66:00:00:00:00:02")
    neigh.set("10.65.9.0", "66:00:00:00:00:03")
    fdb.set("66:00:00:00:00:02", "10.255.0.2")
    fdb.set("66:00:00:00:00:03", "10.255.0.3")
    loop.run(neigh.apply())
    loop.run(fdb.apply())
    out = run(["ip", "-n", netns, "neigh", "show", "dev", "vxlan.calico"]).stdout
    assert "10.65.8.0 lladdr 66:00:00:00:00:02 PERMANENT" in out
    out = run(["bridge", "-n", netns, "fdb", "show", "dev", "vxlan.calico"]).stdout
    assert "66:00:00:00:00:03 dst 10.255.0.3 self permanent" in out

    run(["ip", "-n", netns, "neigh", "del", "10.65.8.0", "dev", "vxlan.calico"])
    run(["bridge", "-n", netns, "fdb", "del", "66:00:00:00:00:02", "dev", "vxlan.calico",
         "dst", "10.255.0.2"])
    neigh.remove("10.65.9.0")
    fdb.set("66:00:00:00:00:03", "10.255.0.4")  # the node moved
    neigh.mark_resync()
    fdb.mark_resync()
    loop.run(neigh.apply())
    loop.run(fdb.apply())
    out = run(["ip", "-n", netns, "neigh", "show", "dev", "vxlan.calico"]).stdout
    assert "10.65.8.0 lladdr 66:00:00:00:00:02 PERMANENT" in out and "10.65.9.0" not in out
    out = run(["bridge", "-n", netns, "fdb", "show", "dev", "vxlan.calico"]).stdout
    assert "66:00:00:00:00:02 dst 10.255.0.2" in out
    assert "66:00:00:00:00:03 dst 10.255.0.4" in out and "10.255.0.3" not in out
    loop.run(_close(nl))


async def _close(nl: PyrouteNetlink) -> None:
    nl.close()
