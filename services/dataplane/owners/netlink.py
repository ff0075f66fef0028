"""The netlink seam: plain values for links, routes, neighbours and FDB entries, and the one
class that talks to the kernel through pyroute2's asyncio API.

Owners depend on the ``Netlink`` protocol only, so unit tests drive them with an in-memory
fake. ``PyrouteNetlink`` opens one ``AsyncIPRoute`` socket in the calling thread's namespace;
requests on it are issued one at a time by the owners (they batch by writing many requests
per ``apply``, not by sharing the socket between tasks).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
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
    ifname: str = field(default="", compare=False)  # for ``ip -batch``; not compared


# Below this many routes an apply writes them one netlink request at a time; above it, one
# ``ip -batch`` exec (the kernel takes ~100k routes/s that way, pyroute2 ~4k/s).
BULK_ROUTES = 16


def batch_line(r: Route) -> str:
    """``ip -batch`` line replacing ``r`` (the family comes from the ``-6`` of the exec)."""
    tail = f"proto {r.proto} table {r.table}"
    if r.kind == RTN_BLACKHOLE:
        return f"route replace blackhole {r.dst} {tail}"
    if r.gateway:
        onlink = " onlink" if r.onlink else ""
        return f"route replace {r.dst} via {r.gateway} dev {r.ifname}{onlink} {tail}"
    scope = " scope link" if r.scope == RT_SCOPE_LINK else ""
    return f"route replace {r.dst} dev {r.ifname} {tail}{scope}"


def failed_batch_lines(stderr: str) -> set[int]:
    """1-based line numbers ``ip -batch -force`` reports as "Command failed -:N"."""
    out = set()
    for line in stderr.splitlines():
        if line.startswith("Command failed -:"):
            num = line.rsplit(":", 1)[1].strip()
            if num.isdigit():
                out.add(int(num))
    return out


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
    async def open(self) -> None: ...
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
    async def route_replace_many(self, routes: list[Route]) -> list[NetlinkError | None]: ...
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


def link_from_json(d: dict[str, Any], index_of: dict[Any, Any]) -> Link:
    """One element of ``ip -j -d link show`` as a ``Link``."""
    info = d.get("linkinfo") or {}
    kind = info.get("info_kind") or ""
    vx: tuple[tuple[str, Any], ...] = ()
    data = info.get("info_data") or {}
    if kind == "vxlan":
        vx = (("vni", data.get("id")), ("port", data.get("port")), ("local", data.get("local")),
              ("link", index_of.get(data.get("link"))),
              ("learning", int(bool(data.get("learning")))))
    flags = d.get("flags") or []
    return Link(index=d["ifindex"], name=d.get("ifname") or "", kind=kind, mtu=d.get("mtu") or 0,
                up="UP" in flags, oper_up=d.get("operstate") in ("UP", "UNKNOWN"),
                mac=d.get("address") or "", vxlan=vx)


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

    async def open(self) -> None:
        """Import pyroute2 and open the socket now (~0.1 s), not in the first apply."""
        await self._sock()

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

    async def _ip_json(self, *args: str) -> list[dict[str, Any]]:
        # Dumps go through iproute2's JSON: pyroute2 decodes ~0.6 ms per link (every
        # attribute of every message), ``ip -j`` ~0.05 ms; requests stay on netlink.
        self.requests += 1
        proc = await asyncio.create_subprocess_exec(
            "ip", "-j", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise NetlinkError(f"ip -j {' '.join(args)}: {err.decode().strip()}")
        data = json.loads(out or b"[]")
        return data if isinstance(data, list) else []

    async def links(self) -> list[Link]:
        data = await self._ip_json("-d", "link", "show")
        index_of = {d.get("ifname"): d.get("ifindex") for d in data}
        return [link_from_json(d, index_of) for d in data]

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
        return [f"{a['local']}/{a['prefixlen']}" for d in await self._ip_json("addr", "show")
                if d.get("ifindex") == index for a in d.get("addr_info", [])]

    async def address_owners(self) -> dict[str, int]:
        """Every local address (without prefix length) → the index of its interface."""
        return {a["local"]: d["ifindex"] for d in await self._ip_json("addr", "show")
                for a in d.get("addr_info", [])}

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

    async def route_replace_many(self, routes: list[Route]) -> list[NetlinkError | None]:
        """Replace many routes; one ``ip -batch`` per family when there are enough of them.

        Lines ``ip`` reports as failed are retried one by one over netlink, so each error
        carries its errno (ENODEV: the interface is gone) like a single request's would.
        """
        results: list[NetlinkError | None] = [None] * len(routes)
        families = {4: [i for i, r in enumerate(routes) if ":" not in r.dst],
                    6: [i for i, r in enumerate(routes) if ":" in r.dst]}
        for fam, idxs in families.items():
            bulk = [i for i in idxs if routes[i].ifname or routes[i].kind == RTN_BLACKHOLE]
            if len(bulk) < BULK_ROUTES:
                bulk = []
            retry = [i for i in idxs if i not in set(bulk)]
            if bulk:
                text = "\n".join(batch_line(routes[i]) for i in bulk) + "\n"
                self.requests += 1
                proc = await asyncio.create_subprocess_exec(
                    "ip", *(["-6"] if fam == 6 else []), "-force", "-batch", "-",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE)
                _, err = await proc.communicate(text.encode())
                if proc.returncode != 0:
                    failed = failed_batch_lines(err.decode(errors="replace"))
                    retry += [bulk[n - 1] for n in sorted(failed) if 0 < n <= len(bulk)]
                    if not failed:
                        retry += bulk
            for i in retry:
                try:
                    await self.route_replace(routes[i])
                except NetlinkError as exc:
                    results[i] = exc
        return results

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
