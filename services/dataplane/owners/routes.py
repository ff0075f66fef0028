"""Route, neighbour and FDB owners over netlink (Felix's ``routetable/`` and the VXLAN FDB).

``RouteOwner`` owns routes in one table that it can recognise as its own: protocol 80 (tunnel,
blackhole and same-subnet routes, as Felix marks them) or any route out of a workload
interface (``cali*``). Desired routes are keyed by destination; ``apply()`` writes every dirty
destination with ``RTM_NEWROUTE`` + replace, so a write is idempotent and a route left by the
CNI plugin with the same shape is not rewritten. A route whose interface does not exist yet
(the CNI has not created the veth) is *pending*, not an error: it is written on the first
apply after the interface shows up (``pending_ifaces`` tells the driver what to watch for).

``NeighbourOwner`` and ``FdbOwner`` own every permanent entry on one device (``vxlan.calico``):
the VTEP IP → MAC neighbour entries and MAC → node IP forwarding entries that let a route
``via <VTEP IP> dev vxlan.calico onlink`` reach the right node without learning.

Deletions of anything not written in this session happen only with ``allow_deletes``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..commands import KernelError
from .netlink import (
    ENODEV,
    ENOENT,
    ESRCH,
    MAIN_TABLE,
    NUD_PERMANENT,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    RTPROT_BOOT,
    RTPROT_CALICO,
    FdbEntry,
    Link,
    Neighbour,
    Netlink,
    NetlinkError,
    Route,
    norm_cidr,
)

log = logging.getLogger(__name__)

_GONE = (ENOENT, ESRCH, ENODEV)


class LinkCache:
    """Interface name ↔ index, refreshed on read-back and when a name is missing."""

    def __init__(self, nl: Netlink) -> None:
        self._nl = nl
        self.by_name: dict[str, Link] = {}
        self.by_index: dict[int, Link] = {}
        self.refreshed_at = 0.0

    async def refresh(self) -> None:
        links = await self._nl.links()
        self.by_name = {lk.name: lk for lk in links}
        self.by_index = {lk.index: lk for lk in links}
        self.refreshed_at = time.monotonic()

    def apply_event(self, link: Link, deleted: bool) -> None:
        """Keep the cache current from RTNLGRP_LINK events between refreshes."""
        old = self.by_index.get(link.index)
        if old is not None and self.by_name.get(old.name) is old:
            del self.by_name[old.name]
        if deleted:
            self.by_index.pop(link.index, None)
            return
        self.by_index[link.index] = link
        self.by_name[link.name] = link

    async def index(self, name: str, *, refresh_if_missing: bool = True) -> int | None:
        link = self.by_name.get(name)
        if link is None and (refresh_if_missing or not self.refreshed_at):
            await self.refresh()
            link = self.by_name.get(name)
        return link.index if link else None

    def name(self, index: int) -> str | None:
        link = self.by_index.get(index)
        return link.name if link else None


@dataclass(frozen=True)
class RouteTarget:
    """Where a destination should go: out of an interface, nowhere, or via a gateway."""

    kind: str  # "dev" | "blackhole" | "via"
    ifname: str = ""
    gateway: str | None = None
    onlink: bool = False
    proto: int = RTPROT_CALICO

    @staticmethod
    def dev(ifname: str, proto: int = RTPROT_BOOT) -> RouteTarget:
        return RouteTarget("dev", ifname=ifname, proto=proto)

    @staticmethod
    def blackhole() -> RouteTarget:
        return RouteTarget("blackhole")

    @staticmethod
    def via(gateway: str, ifname: str, onlink: bool = False) -> RouteTarget:
        return RouteTarget("via", ifname=ifname, gateway=gateway, onlink=onlink)


@dataclass
class RouteStats:
    writes: int = 0
    deletes: int = 0
    readbacks: int = 0
    repaired: int = 0
    last_apply_writes: int = 0


class RouteOwner:
    def __init__(self, nl: Netlink, links: LinkCache, *, table: int = MAIN_TABLE,
                 iface_prefixes: tuple[str, ...] = ("cali",)) -> None:
        self._nl = nl
        self._links = links
        self.table = table
        self._prefixes = iface_prefixes
        self._desired: dict[str, RouteTarget] = {}
        self._kernel: dict[str, Route] = {}
        self._written: set[str] = set()
        self._dirty: set[str] = set()
        self._need_readback = True
        self.pending: dict[str, str] = {}  # dst → missing interface
        self._links_stale = False
        self.stats = RouteStats()
        self.last_readback = 0.0

    # -- desired state ---------------------------------------------------------------------

    def set_route(self, dst: str, target: RouteTarget) -> None:
        dst = norm_cidr(dst)
        if self._desired.get(dst) != target:
            self._desired[dst] = target
            self._dirty.add(dst)

    def remove_route(self, dst: str) -> None:
        dst = norm_cidr(dst)
        if self._desired.pop(dst, None) is not None:
            self._dirty.add(dst)
            self.pending.pop(dst, None)

    def desired(self) -> dict[str, RouteTarget]:
        return dict(self._desired)

    def reset_desired(self) -> None:
        self._dirty.update(self._desired)
        self._desired.clear()
        self.pending.clear()

    @property
    def pending_ifaces(self) -> set[str]:
        return set(self.pending.values())

    def mark_resync(self) -> None:
        self._need_readback = True

    def iface_appeared(self, ifname: str) -> None:
        """An interface came up: retry the routes waiting for it."""
        self._dirty.update(d for d, i in self.pending.items() if i == ifname)
        if ifname not in self._links.by_name:
            self._links_stale = True  # told by someone who did not update the cache

    @property
    def in_sync(self) -> bool:
        return not self._dirty and not self._need_readback and not self.pending

    # -- kernel ----------------------------------------------------------------------------

    def _owned(self, r: Route) -> bool:
        if r.proto == RTPROT_CALICO:
            return True
        name = self._links.name(r.ifindex) if r.ifindex else None
        return bool(name and name.startswith(self._prefixes))

    async def _resync(self) -> None:
        await self._links.refresh()
        routes = await self._nl.routes(self.table)
        self.stats.readbacks += 1
        self.last_readback = time.monotonic()
        self._kernel = {}
        for r in routes:
            if self._owned(r) or r.dst in self._desired:
                self._kernel[r.dst] = r
        for dst in self._desired:
            self._dirty.add(dst)  # compared against the fresh kernel view below
        self._dirty.update(self._kernel)
        self._need_readback = False

    async def _resolve(self, dst: str, t: RouteTarget) -> Route | None:
        if t.kind == "blackhole":
            return Route(dst=dst, kind=RTN_BLACKHOLE, proto=t.proto, table=self.table)
        idx = await self._links.index(t.ifname, refresh_if_missing=False)
        if idx is None:
            return None
        if t.kind == "dev":
            return Route(dst=dst, kind=RTN_UNICAST, ifindex=idx, proto=t.proto,
                         scope=RT_SCOPE_LINK, table=self.table, ifname=t.ifname)
        return Route(dst=dst, kind=RTN_UNICAST, ifindex=idx, gateway=t.gateway,
                     onlink=t.onlink, proto=t.proto, scope=RT_SCOPE_UNIVERSE, table=self.table,
                     ifname=t.ifname)

    async def apply(self, allow_deletes: bool = True) -> bool:
        if self._need_readback:
            await self._resync()
        elif self._links_stale:
            await self._links.refresh()
        self._links_stale = False
        # Routes waiting for an interface that has since appeared (a device another owner
        # just created shares this cache; workload interfaces arrive via link events).
        self._dirty.update(d for d, i in self.pending.items() if i in self._links.by_name)
        errors: list[str] = []
        replaces: list[tuple[str, Route, Route | None]] = []
        gone_iface = False
        for dst in sorted(self._dirty):
            want = self._desired.get(dst)
            have = self._kernel.get(dst)
            if want is not None:
                route = await self._resolve(dst, want)
                if route is None:
                    self.pending[dst] = want.ifname
                    continue
                self.pending.pop(dst, None)
                if have != route:
                    replaces.append((dst, route, have))
                    continue
            elif have is not None:
                if not allow_deletes and dst not in self._written:
                    continue
                try:
                    await self._nl.route_delete(have)
                    self.stats.deletes += 1
                except NetlinkError as exc:
                    if exc.code not in _GONE:
                        errors.append(str(exc))
                        continue
                self._kernel.pop(dst, None)
                self._written.discard(dst)
            self._dirty.discard(dst)
        # All the writes of this apply in one go (one ip -batch when there are many).
        results = await self._nl.route_replace_many([r for _, r, _ in replaces])
        writes = 0
        for (dst, route, have), err in zip(replaces, results, strict=True):
            if err is None:
                writes += 1
                if dst in self._written and have is None:
                    self.stats.repaired += 1
                self._kernel[dst] = route
                self._written.add(dst)
                self._dirty.discard(dst)
            elif err.code == ENODEV:
                self.pending[dst] = route.ifname  # the interface went away meanwhile
                gone_iface = True
            else:
                errors.append(str(err))
        if gone_iface:
            await self._links.refresh()
        self._dirty.difference_update(self.pending)
        self.stats.writes += writes
        self.stats.last_apply_writes = writes
        if errors:
            self._need_readback = True
            raise KernelError(f"{len(errors)} route write(s) failed, first: {errors[0]}")
        return writes > 0


class RouteClass:
    """The routes one manager wants, as a whole: ``sync()`` sets the new ones and removes the
    ones it set before and no longer wants, never another manager's."""

    def __init__(self, owner: RouteOwner) -> None:
        self._owner = owner
        self._mine: dict[str, RouteTarget] = {}

    def sync(self, desired: dict[str, RouteTarget]) -> None:
        desired = {norm_cidr(d): t for d, t in desired.items()}
        for dst in self._mine.keys() - desired.keys():
            self._owner.remove_route(dst)
        for dst, target in desired.items():
            if self._mine.get(dst) != target:
                self._owner.set_route(dst, target)
        self._mine = desired

    @property
    def routes(self) -> dict[str, RouteTarget]:
        return dict(self._mine)

    def reset(self) -> None:
        """The owner forgot its desired routes (a new generation): forget ours too."""
        self._mine = {}


class NeighbourOwner:
    """Permanent neighbour entries (IP → MAC) on one device; all of them are ours."""

    def __init__(self, nl: Netlink, links: LinkCache, ifname: str) -> None:
        self._nl = nl
        self._links = links
        self.ifname = ifname
        self._desired: dict[str, str] = {}
        self._kernel: dict[str, str] | None = None
        self._dirty = True

    def set(self, ip: str, mac: str) -> None:
        if self._desired.get(ip) != mac.lower():
            self._desired[ip] = mac.lower()
            self._dirty = True

    def remove(self, ip: str) -> None:
        if self._desired.pop(ip, None) is not None:
            self._dirty = True

    def replace_all(self, entries: dict[str, str]) -> None:
        new = {k: v.lower() for k, v in entries.items()}
        if new != self._desired:
            self._desired = new
            self._dirty = True

    def mark_resync(self) -> None:
        self._kernel = None
        self._dirty = True

    @property
    def in_sync(self) -> bool:
        return not self._dirty

    async def apply(self, allow_deletes: bool = True) -> bool:
        if not self._dirty:
            return False
        idx = await self._links.index(self.ifname, refresh_if_missing=False)
        if idx is None:
            return False  # the device manager creates it; retried on its next apply
        if self._kernel is None:
            self._kernel = {n.dst: n.lladdr.lower() for n in await self._nl.neighbours(idx)
                            if n.state & NUD_PERMANENT}
        wrote = False
        for ip, mac in sorted(self._desired.items()):
            if self._kernel.get(ip) != mac:
                await self._nl.neigh_replace(Neighbour(idx, ip, mac))
                self._kernel[ip] = mac
                wrote = True
        if allow_deletes:
            for ip in sorted(set(self._kernel) - set(self._desired)):
                try:
                    await self._nl.neigh_delete(Neighbour(idx, ip, self._kernel[ip]))
                except NetlinkError as exc:
                    if exc.code not in _GONE:
                        raise
                del self._kernel[ip]
                wrote = True
        self._dirty = bool(set(self._kernel) - set(self._desired))
        return wrote


class FdbOwner:
    """Forwarding entries (MAC → remote node IP) on one VXLAN device; all are ours."""

    def __init__(self, nl: Netlink, links: LinkCache, ifname: str) -> None:
        self._nl = nl
        self._links = links
        self.ifname = ifname
        self._desired: dict[str, str] = {}
        self._kernel: dict[str, str] | None = None
        self._dirty = True

    def set(self, mac: str, dst: str) -> None:
        if self._desired.get(mac.lower()) != dst:
            self._desired[mac.lower()] = dst
            self._dirty = True

    def remove(self, mac: str) -> None:
        if self._desired.pop(mac.lower(), None) is not None:
            self._dirty = True

    def replace_all(self, entries: dict[str, str]) -> None:
        new = {k.lower(): v for k, v in entries.items()}
        if new != self._desired:
            self._desired = new
            self._dirty = True

    def mark_resync(self) -> None:
        self._kernel = None
        self._dirty = True

    @property
    def in_sync(self) -> bool:
        return not self._dirty

    async def apply(self, allow_deletes: bool = True) -> bool:
        if not self._dirty:
            return False
        idx = await self._links.index(self.ifname, refresh_if_missing=False)
        if idx is None:
            return False
        if self._kernel is None:
            self._kernel = {}
            for e in await self._nl.fdb(idx):
                self._kernel[e.lladdr.lower()] = e.dst
        wrote = False
        for mac, dst in sorted(self._desired.items()):
            if self._kernel.get(mac) != dst:
                old = self._kernel.get(mac)
                if old is not None:
                    await _ignore_gone(self._nl.fdb_delete(FdbEntry(idx, mac, old)))
                await self._nl.fdb_replace(FdbEntry(idx, mac, dst))
                self._kernel[mac] = dst
                wrote = True
        if allow_deletes:
            for mac in sorted(set(self._kernel) - set(self._desired)):
                await _ignore_gone(self._nl.fdb_delete(FdbEntry(idx, mac, self._kernel[mac])))
                del self._kernel[mac]
                wrote = True
        self._dirty = bool(set(self._kernel) - set(self._desired))
        return wrote


async def _ignore_gone(aw: object) -> None:
    try:
        await aw  # type: ignore[misc]
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise


def owned_routes(routes: Iterable[Route], links: LinkCache,
                 prefixes: tuple[str, ...] = ("cali",)) -> list[Route]:
    """The routes a ``RouteOwner`` would consider its own (for tests and diagnostics)."""
    out = []
    for r in routes:
        name = links.name(r.ifindex) if r.ifindex else None
        if r.proto == RTPROT_CALICO or (name and name.startswith(prefixes)):
            out.append(r)
    return out
