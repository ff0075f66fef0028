"""Hand-written fakes of the driver's two kernel seams, for unit tests.

``FakeRunner`` records every command with its stdin and answers from a small table (save
commands return what the test put in ``kernel_text``); ``fail`` makes the next N runs of a tool
exit non-zero. ``FakeNetlink`` keeps links, addresses, routes, neighbours and FDB entries in
dictionaries, counts writes, and raises ``NetlinkError`` with the kernel's errno where the
kernel would (a route to a missing interface is ENODEV).

Example::

    runner, nl = FakeRunner(), FakeNetlink()
    nl.add_link("eth0", addresses=["10.0.0.1/24"])
    driver = build_driver(DriverSettings(node="n1"), sink=ListSink(), runner=runner, nl=nl,
                          sysctls=FakeSysctls())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .commands import Result
from .owners.netlink import (
    ENODEV,
    ESRCH,
    FdbEntry,
    Link,
    Neighbour,
    NetlinkError,
    Route,
)


@dataclass
class FakeRunner:
    calls: list[tuple[tuple[str, ...], str | None]] = field(default_factory=list)
    kernel_text: dict[str, str] = field(default_factory=dict)  # tool basename → stdout
    fail: dict[str, int] = field(default_factory=dict)  # tool basename → failures left
    stderr: dict[str, str] = field(default_factory=dict)

    async def run(self, argv: Sequence[str], input: str | None = None,
                  timeout: float = 60.0) -> Result:
        self.calls.append((tuple(argv), input))
        tool = argv[0]
        if self.fail.get(tool, 0) > 0:
            self.fail[tool] -= 1
            return Result(1, "", self.stderr.get(tool, f"{tool}: injected failure"))
        if tool == "nft" and argv[1:2] == ["list"]:
            text = self.kernel_text.get("nft")
            if text is None:
                return Result(1, "", "Error: No such file or directory")
            return Result(0, text, "")
        return Result(0, self.kernel_text.get(tool, ""), "")

    def tools(self) -> list[str]:
        return [argv[0] for argv, _ in self.calls]

    def inputs(self, tool: str) -> list[str]:
        return [inp or "" for argv, inp in self.calls if argv[0] == tool]


@dataclass
class FakeSysctls:
    values: dict[str, str] = field(default_factory=dict)

    def write(self, path: str, value: str) -> bool:
        changed = self.values.get(path) != value
        self.values[path] = value
        return changed


@dataclass
class FakeNetlink:
    links_by_index: dict[int, Link] = field(default_factory=dict)
    addrs: dict[int, set[str]] = field(default_factory=dict)
    route_table: dict[tuple[int, str], Route] = field(default_factory=dict)
    neigh: dict[tuple[int, str], Neighbour] = field(default_factory=dict)
    fdb_entries: dict[tuple[int, str], FdbEntry] = field(default_factory=dict)
    writes: int = 0
    fail_routes: int = 0
    supported_kinds: tuple[str, ...] = ("vxlan", "ipip", "veth")
    _next: int = 1

    # -- test set-up -----------------------------------------------------------------------

    def add_link(self, name: str, *, kind: str = "", up: bool = True, mtu: int = 1500,
                 mac: str = "", addresses: Sequence[str] = ()) -> Link:
        self._next += 1
        link = Link(index=self._next, name=name, kind=kind, mtu=mtu, up=up, oper_up=up,
                    mac=mac)
        self.links_by_index[link.index] = link
        self.addrs[link.index] = set(addresses)
        return link

    def remove_link(self, name: str) -> None:
        for idx, lk in list(self.links_by_index.items()):
            if lk.name == name:
                del self.links_by_index[idx]
                self.addrs.pop(idx, None)
                for key in [k for k, r in self.route_table.items() if r.ifindex == idx]:
                    del self.route_table[key]

    def link(self, name: str) -> Link | None:
        return next((lk for lk in self.links_by_index.values() if lk.name == name), None)

    def routes_by_dst(self) -> dict[str, Route]:
        return {r.dst: r for r in self.route_table.values()}

    # -- Netlink ---------------------------------------------------------------------------

    async def open(self) -> None:
        pass

    async def links(self) -> list[Link]:
        return list(self.links_by_index.values())

    async def create_vxlan(self, name: str, *, vni: int, port: int, local: str,
                           parent_index: int, mac: str, mtu: int) -> None:
        self.writes += 1
        link = self.add_link(name, kind="vxlan", up=False, mtu=mtu, mac=mac)
        self.links_by_index[link.index] = replace(link, vxlan=(
            ("vni", vni), ("port", port), ("local", local), ("link", parent_index),
            ("learning", 0)))

    async def create_link(self, name: str, kind: str) -> None:
        self.writes += 1
        if kind not in self.supported_kinds:
            raise NetlinkError(f"create {name}: (95, 'Operation not supported')", 95)
        self.add_link(name, kind=kind, up=False)

    async def set_link(self, index: int, *, mtu: int | None = None, mac: str | None = None,
                       up: bool | None = None) -> None:
        self.writes += 1
        lk = self.links_by_index[index]
        self.links_by_index[index] = replace(
            lk, mtu=mtu if mtu is not None else lk.mtu, mac=mac if mac is not None else lk.mac,
            up=up if up is not None else lk.up, oper_up=up if up is not None else lk.oper_up)

    async def delete_link(self, index: int) -> None:
        self.writes += 1
        self.remove_link(self.links_by_index[index].name)

    async def addresses(self, index: int) -> list[str]:
        return sorted(self.addrs.get(index, set()))

    async def address_owners(self) -> dict[str, int]:
        return {a.split("/", 1)[0]: idx for idx, addrs in self.addrs.items() for a in addrs}

    async def add_address(self, index: int, cidr: str) -> None:
        self.writes += 1
        self.addrs.setdefault(index, set()).add(cidr)

    async def delete_address(self, index: int, cidr: str) -> None:
        self.writes += 1
        self.addrs.get(index, set()).discard(cidr)

    async def routes(self, table: int = 254) -> list[Route]:
        return [r for (t, _), r in self.route_table.items() if t == table]

    async def route_replace(self, route: Route) -> None:
        self.writes += 1
        if self.fail_routes > 0:
            self.fail_routes -= 1
            raise NetlinkError(f"replace route {route.dst}: (22, 'Invalid argument')", 22)
        if route.ifindex and route.ifindex not in self.links_by_index:
            raise NetlinkError(f"replace route {route.dst}: (19, 'No such device')", ENODEV)
        self.route_table[(route.table, route.dst)] = route

    async def route_replace_many(self, routes: list[Route]) -> list[NetlinkError | None]:
        out: list[NetlinkError | None] = []
        for r in routes:
            try:
                await self.route_replace(r)
                out.append(None)
            except NetlinkError as exc:
                out.append(exc)
        return out

    async def route_delete(self, route: Route) -> None:
        self.writes += 1
        if self.route_table.pop((route.table, route.dst), None) is None:
            raise NetlinkError(f"delete route {route.dst}: (3, 'No such process')", ESRCH)

    async def neighbours(self, ifindex: int) -> list[Neighbour]:
        return [n for (i, _), n in self.neigh.items() if i == ifindex]

    async def neigh_replace(self, n: Neighbour) -> None:
        self.writes += 1
        self.neigh[(n.ifindex, n.dst)] = n

    async def neigh_delete(self, n: Neighbour) -> None:
        self.writes += 1
        self.neigh.pop((n.ifindex, n.dst), None)

    async def fdb(self, ifindex: int) -> list[FdbEntry]:
        return [e for (i, _), e in self.fdb_entries.items() if i == ifindex]

    async def fdb_replace(self, e: FdbEntry) -> None:
        self.writes += 1
        self.fdb_entries[(e.ifindex, e.lladdr)] = e

    async def fdb_delete(self, e: FdbEntry) -> None:
        self.writes += 1
        self.fdb_entries.pop((e.ifindex, e.lladdr), None)

    def close(self) -> None:
        pass
