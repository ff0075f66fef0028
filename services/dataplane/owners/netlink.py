"""The netlink seam: plain values for links, routes, neighbours and FDB entries, and the one
class that talks to the kernel through pyroute2's asyncio API.

Owners depend on the ``Netlink`` protocol only, so unit tests drive them with an in-memory
fake. ``PyrouteNetlink`` opens one ``AsyncIPRoute`` socket in the calling thread's namespace;
requests on it are issued one at a time by the owners (they batch by writing many requests
per ``apply``, not by sharing the socket between tasks).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..commands import KernelError

RTPROT_BOOT = 3
RTPROT_CALICO = 80  # Felix's tunnel, blackhole and same-subnet routes
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RTNH_F_ONLINK = 4
MAIN_TABLE = 254
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
IFF_UP = 0x1
ENODEV = 19
ENOENT = 2
ESRCH = 3
EEXIST = 17


def norm_cidr(cidr: str) -> str:
    """``10.0.0.5`` → ``10.0.0.5/32``; host bits cleared; IPv6 compressed."""
    return str(ipaddress.ip_network(cidr if "/" in cidr else
                                     cidr + ("/128" if ":" in cidr else "/32"), strict=False))


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str = ""
    mtu: int = 1500
    up: bool = False
    oper_up: bool = False
    mac: str = ""
    vxlan: tuple[tuple[str, Any], ...] = ()  # (vni, port, local, link, learning) when kind=vxlan

    def vxlan_attr(self, key: str) -> Any:
        return dict(self.vxlan).get(key)


@dataclass(frozen=True)
class Route:
    dst: str  # normalised CIDR
    kind: int = RTN_UNICAST
    ifindex: int = 0
    gateway: str | None = None
    onlink: bool = False
    proto: int = RTPROT_CALICO
    scope: int = RT_SCOPE_UNIVERSE
    table: int = MAIN_TABLE


@dataclass(frozen=True)
class Neighbour:
    ifindex: int
    dst: str
    lladdr: str
    state: int = NUD_PERMANENT


@dataclass(frozen=True)
class FdbEntry:
    ifindex: int
    lladdr: str
    dst: str


class NetlinkError(KernelError):
    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class Netlink(Protocol):
    async def links(self) -> list[Link]: ...
    async def create_vxlan(self, name: str, *, vni: int, port: int, local: str,
                           parent_index: int, mac: str, mtu: int) -> None: ...
    async def create_link(self, name: str, kind: str) -> None: ...
    async def set_link(self, index: int, *, mtu: int | None = None, mac: str | None = None,
                       up: bool | None = None) -> None: ...
    async def delete_link(self, index: int) -> None: ...
    async def addresses(self, index: int) -> list[str]: ...
    async def address_owners(self) -> dict[str, int]: ...
    async def add_address(self, index: int, cidr: str) -> None: ...
    async def delete_address(self, index: int, cidr: str) -> None: ...
    async def routes(self, table: int = MAIN_TABLE) -> list[Route]: ...
    async def route_replace(self, route: Route) -> None: ...
    async def route_delete(self, route: Route) -> None: ...
    async def neighbours(self, ifindex: int) -> list[Neighbour]: ...
    async def neigh_replace(self, n: Neighbour) -> None: ...
    async def neigh_delete(self, n: Neighbour) -> None: ...
    async def fdb(self, ifindex: int) -> list[FdbEntry]: ...
    async def fdb_replace(self, e: FdbEntry) -> None: ...
    async def fdb_delete(self, e: FdbEntry) -> None: ...
    def close(self) -> None: ...


def parse_link(m: Any) -> Link:
    """A pyroute2 ``ifinfmsg`` (dump reply or RTNLGRP_LINK event) as a ``Link``."""
    info = m.get("IFLA_LINKINFO")
    kind = ""
    vx: tuple[tuple[str, Any], ...] = ()
    if info is not None:
        kind = info.get("IFLA_INFO_KIND") or ""
        data = info.get("IFLA_INFO_DATA")
        if kind == "vxlan" and data is not None:
            vx = (
                ("vni", data.get("IFLA_VXLAN_ID")),
                ("port", data.get("IFLA_VXLAN_PORT")),
                ("local", data.get("IFLA_VXLAN_LOCAL")),
                ("link", data.get("IFLA_VXLAN_LINK")),
                ("learning", data.get("IFLA_VXLAN_LEARNING")),
            )
    return Link(
        index=m["index"], name=m.get("IFLA_IFNAME") or "", kind=kind,
        mtu=m.get("IFLA_MTU") or 0, up=bool(m["flags"] & IFF_UP),
        oper_up=m.get("IFLA_OPERSTATE") in ("UP", "UNKNOWN"),
        mac=m.get("IFLA_ADDRESS") or "", vxlan=vx,
    )


def _err(what: str, exc: Exception) -> NetlinkError:
    code = int(getattr(exc, "code", 0) or 0)
    return NetlinkError(f"{what}: {exc}", code)


@dataclass
class PyrouteNetlink:
    """``Netlink`` over ``pyroute2.AsyncIPRoute`` (created lazily in the running loop)."""

    _ipr: Any = None
    requests: int = 0
    _closed: bool = field(default=False)

    async def _sock(self) -> Any:
        if self._ipr is None:
            from pyroute2 import AsyncIPRoute  # imported here: ~100 ms, drivers only

            self._ipr = AsyncIPRoute()
            await self._ipr.setup_endpoint()
        return self._ipr

    async def _call(self, what: str, method: str, *args: Any, **kw: Any) -> Any:
        ipr = await self._sock()
        self.requests += 1
        try:
            result = await getattr(ipr, method)(*args, **kw)
        except Exception as exc:  # pyroute2 raises NetlinkError / OSError
            raise _err(what, exc) from exc
        return result

    async def _dump(self, what: str, method: str, *args: Any, **kw: Any) -> list[Any]:
        ipr = await self._sock()
        self.requests += 1
        try:
            gen = await getattr(ipr, method)(*args, **kw)
            return [m async for m in gen]
        except Exception as exc:
            raise _err(what, exc) from exc

    async def links(self) -> list[Link]:
        return [parse_link(m) for m in await self._dump("dump links", "link", "dump")]

    async def create_vxlan(self, name: str, *, vni: int, port: int, local: str,
                           parent_index: int, mac: str, mtu: int) -> None:
        await self._call(f"create {name}", "link", "add", ifname=name, kind="vxlan",
                         vxlan_id=vni, vxlan_port=port, vxlan_local=local,
                         vxlan_link=parent_index, vxlan_learning=0, address=mac, mtu=mtu)

    async def create_link(self, name: str, kind: str) -> None:
        await self._call(f"create {name}", "link", "add", ifname=name, kind=kind)

    async def set_link(self, index: int, *, mtu: int | None = None, mac: str | None = None,
                       up: bool | None = None) -> None:
        kw: dict[str, Any] = {}
        if mtu is not None:
            kw["mtu"] = mtu
        if mac is not None:
            kw["address"] = mac
        if up is not None:
            kw["state"] = "up" if up else "down"
        if kw:
            await self._call(f"set link {index}", "link", "set", index=index, **kw)

    async def delete_link(self, index: int) -> None:
        await self._call(f"delete link {index}", "link", "del", index=index)

    async def addresses(self, index: int) -> list[str]:
        out = []
        for m in await self._dump("dump addresses", "addr", "dump", index=index):
            out.append(f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}")
        return out

    async def address_owners(self) -> dict[str, int]:
        """Every local address (without prefix length) → the index of its interface."""
        return {m.get("IFA_ADDRESS"): m["index"]
                for m in await self._dump("dump addresses", "addr", "dump")}

    async def add_address(self, index: int, cidr: str) -> None:
        addr, _, plen = cidr.partition("/")
        await self._call(f"add address {cidr}", "addr", "add", index=index, address=addr,
                         prefixlen=int(plen or (128 if ":" in addr else 32)))

    async def delete_address(self, index: int, cidr: str) -> None:
        addr, _, plen = cidr.partition("/")
        await self._call(f"delete address {cidr}", "addr", "del", index=index, address=addr,
                         prefixlen=int(plen or (128 if ":" in addr else 32)))

    async def routes(self, table: int = MAIN_TABLE) -> list[Route]:
        out = []
        for fam in (socket.AF_INET, socket.AF_INET6):
            for m in await self._dump("dump routes", "route", "dump", family=fam, table=table):
                if m.get("RTA_MULTIPATH") is not None:
                    continue
                t = m.get("RTA_TABLE") or m["table"]
                if t != table:
                    continue
                dst = m.get("RTA_DST")
                plen = m["dst_len"]
                if dst is None:
                    dst = "0.0.0.0" if fam == socket.AF_INET else "::"
                out.append(Route(
                    dst=f"{dst}/{plen}", kind=m["type"], ifindex=m.get("RTA_OIF") or 0,
                    gateway=m.get("RTA_GATEWAY"), onlink=bool(m["flags"] & RTNH_F_ONLINK),
                    proto=m["proto"], scope=m["scope"], table=t,
                ))
        return out

    def _route_kw(self, r: Route) -> dict[str, Any]:
        kw: dict[str, Any] = {"dst": r.dst, "table": r.table, "proto": r.proto,
                              "scope": r.scope, "type": r.kind}
        if r.ifindex:
            kw["oif"] = r.ifindex
        if r.gateway:
            kw["gateway"] = r.gateway
        if r.onlink:
            kw["flags"] = RTNH_F_ONLINK
        return kw

    async def route_replace(self, route: Route) -> None:
        await self._call(f"replace route {route.dst}", "route", "replace",
                         **self._route_kw(route))

    async def route_delete(self, route: Route) -> None:
        kw = self._route_kw(route)
        kw.pop("flags", None)
        await self._call(f"delete route {route.dst}", "route", "del", **kw)

    async def neighbours(self, ifindex: int) -> list[Neighbour]:
        out = []
        for m in await self._dump("dump neighbours", "neigh", "dump", ifindex=ifindex):
            if m["family"] not in (socket.AF_INET, socket.AF_INET6):
                continue
            out.append(Neighbour(ifindex=m["ifindex"], dst=m.get("NDA_DST"),
                                 lladdr=m.get("NDA_LLADDR") or "", state=m["state"]))
        return out

    async def neigh_replace(self, n: Neighbour) -> None:
        await self._call(f"replace neighbour {n.dst}", "neigh", "replace", ifindex=n.ifindex,
                         dst=n.dst, lladdr=n.lladdr, state=n.state)

    async def neigh_delete(self, n: Neighbour) -> None:
        await self._call(f"delete neighbour {n.dst}", "neigh", "del", ifindex=n.ifindex,
                         dst=n.dst)

    async def fdb(self, ifindex: int) -> list[FdbEntry]:
        out = []
        for m in await self._dump("dump fdb", "fdb", "dump", ifindex=ifindex):
            dst = m.get("NDA_DST")
            if m["ifindex"] != ifindex or not dst:
                continue
            out.append(FdbEntry(ifindex=ifindex, lladdr=m.get("NDA_LLADDR") or "", dst=dst))
        return out

    async def fdb_replace(self, e: FdbEntry) -> None:
        await self._call(f"replace fdb {e.lladdr}", "neigh", "replace",
                         family=socket.AF_BRIDGE, ifindex=e.ifindex, lladdr=e.lladdr,
                         dst=e.dst, state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)

    async def fdb_delete(self, e: FdbEntry) -> None:
        await self._call(f"delete fdb {e.lladdr}", "neigh", "del", family=socket.AF_BRIDGE,
                         ifindex=e.ifindex, lladdr=e.lladdr, dst=e.dst,
                         state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
