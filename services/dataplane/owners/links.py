"""Devices the driver owns outright (``vxlan.calico``, ``tunl0``) and the link watcher.

``DeviceOwner`` makes one device match a spec: kind and, for VXLAN, VNI, port, local address and
parent device (a mismatch means delete and recreate, as Felix does, because the kernel cannot
change them in place); MAC, MTU and admin state set in place; its IPv4/IPv6 addresses made
exactly the spec's (link-local addresses are the kernel's and left alone). With no spec the
device is deleted, but only when deletes are allowed.

``LinkWatcher`` listens to ``RTNLGRP_LINK`` on its own netlink socket and calls back with
(name, index, up) for every link message, so a workload interface that the CNI plugin creates
gets its routes and status without waiting for the next refresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .netlink import Link, Netlink, NetlinkError, parse_link
from .routes import LinkCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VxlanParams:
    vni: int
    port: int
    local: str
    parent: str  # parent interface name


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str  # "vxlan" | "ipip"
    mtu: int
    addresses: tuple[str, ...] = ()  # CIDRs
    mac: str = ""
    vxlan: VxlanParams | None = None


class DeviceOwner:
    def __init__(self, nl: Netlink, links: LinkCache, name: str, *,
                 deletable: bool = True) -> None:
        self._nl = nl
        self._links = links
        self.name = name
        # tunl0 is the ipip module's own device: never deleted, only left unconfigured.
        self.deletable = deletable
        self._spec: DeviceSpec | None = None
        self._dirty = True
        self._refresh = True
        self.recreated = 0
        self.created = 0

    def set(self, spec: DeviceSpec | None) -> None:
        if spec != self._spec:
            self._spec = spec
            self._dirty = True

    @property
    def spec(self) -> DeviceSpec | None:
        return self._spec

    def mark_resync(self) -> None:
        self._dirty = True
        self._refresh = True

    @property
    def in_sync(self) -> bool:
        return not self._dirty

    def _mismatch(self, link: Link, spec: DeviceSpec) -> str | None:
        if link.kind != spec.kind:
            return f"kind {link.kind!r}"
        if spec.vxlan is not None:
            v = spec.vxlan
            parent = self._links.by_name.get(v.parent)
            checks = (("vni", v.vni), ("port", v.port), ("local", v.local),
                      ("link", parent.index if parent else None), ("learning", 0))
            for key, want in checks:
                if link.vxlan_attr(key) != want:
                    return f"{key} {link.vxlan_attr(key)!r} != {want!r}"
        return None

    async def apply(self, allow_deletes: bool = True) -> bool:
        if not self._dirty:
            return False
        if self._refresh:
            # The shared cache follows link events; re-dump only on a resync.
            await self._links.refresh()
            self._refresh = False
        link = self._links.by_name.get(self.name)
        spec = self._spec
        if spec is None:
            if link is not None and allow_deletes and self.deletable:
                await self._nl.delete_link(link.index)
                await self._links.refresh()
                self._dirty = False
                return True
            self._dirty = link is not None and self.deletable
            return False
        wrote = False
        if link is not None:
            why = self._mismatch(link, spec)
            if why:
                log.info("recreating %s: %s", self.name, why)
                await self._nl.delete_link(link.index)
                self.recreated += 1
                link = None
        if link is None:
            await self._create(spec)
            await self._links.refresh()
            link = self._links.by_name.get(self.name)
            if link is None:
                raise NetlinkError(f"{self.name} did not appear after creation")
            self.created += 1
            wrote = True
        mtu = spec.mtu if spec.mtu and link.mtu != spec.mtu else None
        mac = spec.mac if spec.mac and link.mac.lower() != spec.mac.lower() else None
        if mtu is not None or mac is not None or not link.up:
            await self._nl.set_link(link.index, mtu=mtu, mac=mac, up=True if not link.up else None)
            wrote = True
        have = {a for a in await self._nl.addresses(link.index) if not a.startswith("fe80:")}
        want = set(spec.addresses)
        for cidr in sorted(want - have):
            await self._nl.add_address(link.index, cidr)
            wrote = True
        for cidr in sorted(have - want):
            await self._nl.delete_address(link.index, cidr)
            wrote = True
        self._dirty = False
        return wrote

    async def _create(self, spec: DeviceSpec) -> None:
        if spec.kind == "vxlan":
            assert spec.vxlan is not None
            parent = await self._links.index(spec.vxlan.parent)
            if parent is None:
                raise NetlinkError(f"{self.name}: parent device {spec.vxlan.parent} not found")
            await self._nl.create_vxlan(spec.name, vni=spec.vxlan.vni, port=spec.vxlan.port,
                                        local=spec.vxlan.local, parent_index=parent,
                                        mac=spec.mac, mtu=spec.mtu)
        else:
            await self._nl.create_link(spec.name, spec.kind)


class LinkWatcher:
    """Calls ``on_event(link, deleted)`` for every link add/change/delete in this namespace.

    A socket error (typically ENOBUFS: the kernel dropped events we read too slowly) is the
    environment's: the watcher calls ``on_lost`` (so the caller re-reads the links) and
    reopens its socket after a short pause, instead of ending the driver.
    """

    def __init__(self, on_event: Callable[[Link, bool], None],
                 on_lost: Callable[[], None] | None = None, retry: float = 0.5) -> None:
        self._on_event = on_event
        self._on_lost = on_lost or (lambda: None)
        self._retry = retry
        self.restarts = 0

    async def run(self) -> None:
        from pyroute2 import AsyncIPRoute
        from pyroute2.netlink.exceptions import NetlinkError as PyrouteError
        from pyroute2.netlink.rtnl import RTMGRP_LINK

        while True:
            ipr: Any = AsyncIPRoute()
            try:
                await ipr.bind(groups=RTMGRP_LINK)
                if self.restarts:
                    self._on_lost()
                while True:
                    async for msg in ipr.get():
                        if msg.get("event") not in ("RTM_NEWLINK", "RTM_DELLINK"):
                            continue
                        if not msg.get("IFLA_IFNAME"):
                            continue
                        self._on_event(parse_link(msg), msg.get("event") == "RTM_DELLINK")
            except asyncio.CancelledError:
                raise
            except (OSError, PyrouteError) as exc:
                log.warning("link watcher lost its socket (%s); reopening", exc)
                self.restarts += 1
                self._on_lost()
            finally:
                ipr.close()
            await asyncio.sleep(self._retry)
