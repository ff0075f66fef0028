"""L3 route resolver: IP pools, IPAM blocks, node addresses and tunnels -> ``RouteUpdate``s.

Route facts are kept once for the cluster, keyed by destination CIDR:

- each IP pool is a route (``types`` CIDR_INFO) carrying its ``ip_pool_type`` (VXLAN if
  ``vxlanMode`` is on, else IPIP if ``ipipMode`` is on, else NO_ENCAP) and ``nat_outgoing``;
- each IPAM block with an affinity ``host:<node>`` is a workload route to that node;
- each address allocated in a block to a pod on *another* node (the allocation attribute's
  ``node``) is a borrowed ``/32`` (``/128``) workload route to that node;
- each node address (``spec.bgp.ipv4Address`` and friends, ``spec.addresses``) is a host route;
- each tunnel address (IPIP, VXLAN, WireGuard) is a tunnel route with ``tunnel_type`` flags.

Every route also inherits the pool that covers it (longest prefix), so a block route carries its
pool's type and NAT setting. What differs per node is derived when a node's batch is built:
LOCAL vs REMOTE type bits (destination node is this node or not), ``same_subnet`` (the covering
pool is CrossSubnet and the destination node's address is in this node's subnet) and this
node's own workload ``/32``s (``local_workload``), which only the owning node receives.

``types`` ORs the kinds present at the destination (workload, host, tunnel, each LOCAL or
REMOTE); ``dst_node_name`` is the most specific owner (tunnel, then host, then borrowed
allocation, then block), as Felix's resolver lets later facts override earlier ones.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from libcalico.api.felix import felixbackend_pb2 as fb

from .passthru import node_addresses

LOCAL_WORKLOAD = fb.LOCAL_WORKLOAD
REMOTE_WORKLOAD = fb.REMOTE_WORKLOAD
LOCAL_HOST = fb.LOCAL_HOST
REMOTE_HOST = fb.REMOTE_HOST
LOCAL_TUNNEL = fb.LOCAL_TUNNEL
REMOTE_TUNNEL = fb.REMOTE_TUNNEL

TUNNEL_IPIP = "ipip"
TUNNEL_VXLAN = "vxlan"
TUNNEL_WIREGUARD = "wireguard"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=131072)
def _net(cidr: str) -> IPNetwork:
    return ipaddress.ip_network(cidr, strict=False)


def _on(mode: Any) -> bool:
    return str(mode or "Never") not in ("Never", "")


@dataclass(slots=True)
class PoolRoute:
    cidr: str
    net: IPNetwork
    pool_type: int
    nat_outgoing: bool
    cross_subnet: bool


@dataclass(slots=True)
class NodeRouteInfo:
    v4: str = ""
    v6: str = ""
    v4_net: IPNetwork | None = None
    v6_net: IPNetwork | None = None
    v4_addr: IPAddress | None = None
    v6_addr: IPAddress | None = None
    hosts: tuple[str, ...] = ()  # host-route destinations
    tunnels: tuple[tuple[str, str], ...] = ()  # (destination, tunnel kind)


@dataclass(slots=True)
class _Facts:
    msg: fb.ToDataplane | None  # what a node not named in the route gets (no same-subnet)
    nodes: frozenset[str]  # nodes the route names: they derive their own variant
    owner_addr: IPAddress | None  # set when a CrossSubnet pool makes same_subnet matter
    v6: bool
    msg_same_subnet: fb.ToDataplane | None = None  # ``msg`` with same_subnet, built lazily

    def same_subnet(self) -> fb.ToDataplane:
        if self.msg_same_subnet is None:
            assert self.msg is not None
            m = fb.ToDataplane()
            m.CopyFrom(self.msg)
            m.route_update.same_subnet = True
            self.msg_same_subnet = m
        return self.msg_same_subnet


@dataclass(slots=True)
class RouteEntry:
    pool: PoolRoute | None = None
    block_owner: str = ""
    borrowed_owner: str = ""
    hosts: set[str] = field(default_factory=set)
    tunnels: dict[str, set[str]] = field(default_factory=dict)

    def empty(self) -> bool:
        return (
            self.pool is None
            and not self.block_owner
            and not self.borrowed_owner
            and not self.hosts
            and not self.tunnels
        )


def _host_cidr(addr: str) -> str:
    return f"{addr}/128" if ":" in addr else f"{addr}/32"


def block_routes(value: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(affine node or "", {borrowed /32 or /128: node}) for an IPAM block's JSON."""
    affinity = str(value.get("affinity") or "")
    owner = affinity[len("host:") :] if affinity.startswith("host:") else ""
    borrowed: dict[str, str] = {}
    cidr = str(value.get("cidr") or "")
    allocations = value.get("allocations") or ()
    attributes = value.get("attributes") or ()
    if cidr and allocations:
        net = _net(cidr)
        base = int(net.network_address)
        for ordinal, attr_index in enumerate(allocations):
            if attr_index is None or attr_index >= len(attributes):
                continue
            attrs = attributes[attr_index] or {}
            host = str((attrs.get("secondary") or {}).get("node") or "")
            if host and host != owner:
                addr = (
                    ipaddress.ip_address(base + ordinal)
                    if net.version == 4
                    else (ipaddress.IPv6Address(base + ordinal))
                )
                borrowed[_host_cidr(str(addr))] = host
    return owner, borrowed


class RouteResolver:
    """Cluster-wide route facts; ``route_for`` derives a node's view of one destination."""

    def __init__(self) -> None:
        self.entries: dict[str, RouteEntry] = {}
        self._pools: dict[str, PoolRoute] = {}  # pool name -> route
        self._pools_by_len: list[PoolRoute] = []
        self._nodes: dict[str, NodeRouteInfo] = {}
        self._blocks: dict[str, tuple[str, dict[str, str]]] = {}
        self._node_dsts: dict[str, set[str]] = {}
        self.borrowed_by_node: dict[str, set[str]] = {}
        self.blocks_by_node: dict[str, set[str]] = {}
        # Messages built during this flush, shared by every node that derives the same route.
        self._memo: dict[tuple[Any, ...], fb.ToDataplane] = {}
        self._cover: dict[str, PoolRoute | None] = {}  # destination -> covering pool
        # Per destination, this flush: the generic message most nodes get, and what decides
        # whether a node is one of the few that need their own variant.
        self._facts: dict[str, _Facts] = {}
        # Destinations changed since the last flush -> whether they existed at that flush.
        self._existed: dict[str, bool] = {}
        # Shared per flush by every node of a subnet group that the routes do not name.
        self._named: set[str] | None = None
        self._shared_changes: dict[Any, tuple[list[fb.ToDataplane], list[fb.ToDataplane]]] = {}
        self._shared_snapshot: dict[Any, list[tuple[str, fb.ToDataplane]]] = {}
        # Since the last flush:
        self.dirty: set[str] = set()
        self.nodes_changed: set[str] = set()
        self.pools_changed = False

    # -- inputs ------------------------------------------------------------------------------

    def on_pool(self, name: str, value: dict[str, Any] | None) -> None:
        old = self._pools.pop(name, None)
        new = None
        if value is not None:
            spec = value.get("spec") or {}
            cidr = str(spec.get("cidr") or "")
            if cidr:
                ipip, vxlan = spec.get("ipipMode"), spec.get("vxlanMode")
                pool_type = fb.VXLAN if _on(vxlan) else fb.IPIP if _on(ipip) else fb.NO_ENCAP
                net = _net(cidr)
                new = PoolRoute(
                    str(net),
                    net,
                    pool_type,
                    bool(spec.get("natOutgoing")),
                    "CrossSubnet" in (str(ipip), str(vxlan)),
                )
                self._pools[name] = new
        if old == new:
            return
        self._pools_by_len = sorted(self._pools.values(), key=lambda p: -p.net.prefixlen)
        self._cover = {}
        self._invalidate()
        if old is not None:
            self._update(old.cidr, lambda e: setattr(e, "pool", None))
        if new is not None:
            self._update(new.cidr, lambda e: setattr(e, "pool", new))
        for pool in (old, new):
            if pool is not None:
                self.dirty.update(d for d in self.entries if _within(d, pool.net))
        self.pools_changed = True

    def on_node(self, name: str, value: dict[str, Any] | None) -> None:
        old = self._nodes.pop(name, None)
        new = None
        if value is not None:
            spec = value.get("spec") or {}
            v4, v4_cidr, v6, v6_cidr = node_addresses(value)
            hosts = {_host_cidr(a) for a in (v4, v6) if a}
            for a in spec.get("addresses") or ():
                text = str(a.get("address") or "").split("/", 1)[0]
                if text:
                    hosts.add(_host_cidr(text))
            tunnels = []
            bgp = spec.get("bgp") or {}
            wg = spec.get("wireguard") or {}
            for addr, kind in (
                (bgp.get("ipv4IPIPTunnelAddr"), TUNNEL_IPIP),
                (spec.get("ipv4VXLANTunnelAddr"), TUNNEL_VXLAN),
                (spec.get("ipv6VXLANTunnelAddr"), TUNNEL_VXLAN),
                (wg.get("interfaceIPv4Address"), TUNNEL_WIREGUARD),
                (wg.get("interfaceIPv6Address"), TUNNEL_WIREGUARD),
            ):
                if addr:
                    tunnels.append((_host_cidr(str(addr).split("/", 1)[0]), kind))
            new = NodeRouteInfo(
                v4=v4,
                v6=v6,
                v4_net=_net(v4_cidr) if v4_cidr else None,
                v6_net=_net(v6_cidr) if v6_cidr else None,
                v4_addr=ipaddress.ip_address(v4) if v4 else None,
                v6_addr=ipaddress.ip_address(v6) if v6 else None,
                hosts=tuple(sorted(hosts)),
                tunnels=tuple(sorted(tunnels)),
            )
            self._nodes[name] = new
        if old == new:
            return
        self._invalidate()
        for dst in old.hosts if old else ():
            self._update(dst, lambda e: e.hosts.discard(name), node=name, link=False)
        for dst, kind in old.tunnels if old else ():
            self._update(dst, lambda e, k=kind: _drop_tunnel(e, name, k), node=name, link=False)
        for dst in new.hosts if new else ():
            self._update(dst, lambda e: e.hosts.add(name), node=name)
        for dst, kind in new.tunnels if new else ():
            self._update(dst, lambda e, k=kind: e.tunnels.setdefault(name, set()).add(k), node=name)
        self.dirty.update(self._node_dsts.get(name, ()))
        self.nodes_changed.add(name)

    def on_block(self, cidr: str, value: dict[str, Any] | None) -> None:
        if value is not None and value.get("deleted"):
            value = None
        old_owner, old_borrowed = self._blocks.pop(cidr, ("", {}))
        new_owner, new_borrowed = ("", {}) if value is None else block_routes(value)
        if value is not None:
            self._blocks[cidr] = (new_owner, new_borrowed)
        block = str(_net(cidr))
        if old_owner != new_owner:
            if old_owner:
                _discard(self.blocks_by_node, old_owner, block)
            if new_owner:
                self.blocks_by_node.setdefault(new_owner, set()).add(block)
            self._update(block, lambda e: setattr(e, "block_owner", new_owner), node=new_owner)
        for dst, host in old_borrowed.items():
            if new_borrowed.get(dst) != host:
                _discard(self.borrowed_by_node, host, dst)
                if dst not in new_borrowed:
                    self._update(dst, lambda e: setattr(e, "borrowed_owner", ""))
        for dst, host in new_borrowed.items():
            if old_borrowed.get(dst) != host:
                self.borrowed_by_node.setdefault(host, set()).add(dst)
                self._update(dst, lambda e, h=host: setattr(e, "borrowed_owner", h), node=host)

    def _invalidate(self) -> None:
        """Facts changed: messages shared within this flush are stale."""
        self._memo = {}
        self._facts = {}
        self._named = None
        self._shared_changes = {}
        self._shared_snapshot = {}

    def _update(self, dst: str, change: Any, node: str = "", link: bool = True) -> None:
        if self._memo or self._facts or self._shared_snapshot:
            self._invalidate()
        if dst not in self._existed:
            self._existed[dst] = dst in self.entries
        entry = self.entries.get(dst)
        if entry is None:
            entry = self.entries[dst] = RouteEntry()
        change(entry)
        if node and link:
            self._node_dsts.setdefault(node, set()).add(dst)
        if entry.empty():
            del self.entries[dst]
        self.dirty.add(dst)

    # -- per-node view -----------------------------------------------------------------------

    def cover(self, dst: str) -> PoolRoute | None:
        """The longest-prefix pool containing ``dst`` (memoised until pools change)."""
        try:
            return self._cover[dst]
        except KeyError:
            pass
        found = None
        net = _net(dst)
        for pool in self._pools_by_len:
            if pool.net.version == net.version and net.subnet_of(pool.net):  # type: ignore[arg-type]
                found = pool
                break
        if len(self._cover) > 1_000_000:
            self._cover = {}
        self._cover[dst] = found
        return found

    def existed(self, dst: str) -> bool:
        """Whether ``dst`` was a cluster-wide route at the last flush."""
        existed = self._existed.get(dst)
        return (dst in self.entries) if existed is None else existed

    def route_for(self, me: str, dst: str, local: bool) -> fb.ToDataplane | None:
        """Node ``me``'s ``RouteUpdate`` for ``dst`` (``local``: a workload of ``me`` has it).

        Only the LOCAL/REMOTE bits, ``local_workload`` and ``same_subnet`` depend on ``me``. A
        node that is not named by the route and has no workload at it gets one of two shared
        messages (same subnet as the route's node or not), decided with one lookup; the others
        take the full derivation, memoised per outcome.
        """
        if not local:
            facts = self._facts.get(dst)
            if facts is None:
                facts = self._facts[dst] = self._make_facts(dst)
            if facts.msg is None:
                return None
            if me not in facts.nodes:
                if facts.owner_addr is None:
                    return facts.msg
                mine = self._nodes.get(me)
                net = None if mine is None else (mine.v6_net if facts.v6 else mine.v4_net)
                if net is not None and facts.owner_addr in net:
                    return facts.same_subnet()
                return facts.msg
        return self._derive(me, dst, local)

    def _make_facts(self, dst: str) -> _Facts:
        entry = self.entries.get(dst)
        if entry is None:
            return _Facts(None, frozenset(), None, False)
        nodes = {entry.block_owner, entry.borrowed_owner}
        if entry.hosts:
            nodes.add(min(entry.hosts))
        if entry.tunnels:
            nodes.add(min(entry.tunnels))
        nodes.discard("")
        msg = self._derive("", dst, False)  # as seen from a node named nowhere in the route
        pool = self.cover(dst)
        v6 = ":" in dst
        owner_addr = None
        if pool is not None and pool.cross_subnet and msg is not None:
            owner = msg.route_update.dst_node_name
            info = self._nodes.get(owner) if owner else None
            if info is not None:
                owner_addr = info.v6_addr if v6 else info.v4_addr
        return _Facts(msg, frozenset(nodes), owner_addr, v6)

    def _derive(self, me: str, dst: str, local: bool) -> fb.ToDataplane | None:
        entry = self.entries.get(dst)
        if entry is None and not local:
            return None
        types = 0
        owner = ""
        borrowed = False
        kinds: set[str] | None = None
        if entry is not None:
            if entry.block_owner:
                owner = entry.block_owner
                types |= LOCAL_WORKLOAD if owner == me else REMOTE_WORKLOAD
            if entry.borrowed_owner:
                owner = entry.borrowed_owner
                types |= LOCAL_WORKLOAD if owner == me else REMOTE_WORKLOAD
                borrowed = True
            if entry.hosts:
                owner = min(entry.hosts)
                types |= LOCAL_HOST if owner == me else REMOTE_HOST
            if entry.tunnels:
                owner = min(entry.tunnels)
                types |= LOCAL_TUNNEL if owner == me else REMOTE_TUNNEL
                kinds = entry.tunnels[owner]
        if local:
            owner = me
            types |= LOCAL_WORKLOAD
        pool = self.cover(dst)
        v6 = ":" in dst
        owner_info = self._nodes.get(owner) if owner else None
        owner_ip = "" if owner_info is None else (owner_info.v6 if v6 else owner_info.v4)
        same_subnet = False
        if pool is not None and pool.cross_subnet and owner_info is not None:
            mine = self._nodes.get(me)
            if mine is not None:
                net = mine.v6_net if v6 else mine.v4_net
                addr = owner_info.v6_addr if v6 else owner_info.v4_addr
                same_subnet = net is not None and addr is not None and addr in net
        key = (dst, types, owner, local, same_subnet)
        msg = self._memo.get(key)
        if msg is not None:
            return msg
        rt = fb.RouteUpdate(dst=dst, types=types, borrowed=borrowed)  # type: ignore[arg-type]
        if pool is not None:
            rt.ip_pool_type = pool.pool_type  # type: ignore[assignment]
            rt.nat_outgoing = pool.nat_outgoing
        if kinds is not None:
            rt.tunnel_type.ipip = TUNNEL_IPIP in kinds
            rt.tunnel_type.vxlan = TUNNEL_VXLAN in kinds
            rt.tunnel_type.wireguard = TUNNEL_WIREGUARD in kinds
        if local:
            rt.local_workload = True
        if owner:
            rt.dst_node_name = owner
            rt.dst_node_ip = owner_ip
            rt.same_subnet = same_subnet
        msg = fb.ToDataplane(route_update=rt)
        self._memo[key] = msg
        return msg

    # -- shared lists for the many nodes a change does not name -----------------------------

    def _facts_for(self, dst: str) -> _Facts:
        facts = self._facts.get(dst)
        if facts is None:
            facts = self._facts[dst] = self._make_facts(dst)
        return facts

    def _group(self, me: str) -> tuple[IPNetwork | None, IPNetwork | None]:
        info = self._nodes.get(me)
        return (None, None) if info is None else (info.v4_net, info.v6_net)

    @staticmethod
    def _seen_from(facts: _Facts, group: tuple[IPNetwork | None, IPNetwork | None]) -> Any:
        if facts.owner_addr is None:
            return facts.msg
        net = group[1] if facts.v6 else group[0]
        return facts.same_subnet() if net is not None and facts.owner_addr in net else facts.msg

    def shared_changes(self, me: str) -> tuple[list[fb.ToDataplane], list[fb.ToDataplane]] | None:
        """(removes, updates) since the last flush as node ``me`` sees them, one list shared by
        every node of its subnet group; ``None`` when a changed route names ``me`` (the caller
        then derives its own). The caller guarantees none of ``me``'s workloads is at a
        changed destination."""
        if self._named is None:
            named: set[str] = set()
            for dst in self.dirty:
                named |= self._facts_for(dst).nodes
            self._named = named
        if me in self._named:
            return None
        group = self._group(me)
        cached = self._shared_changes.get(group)
        if cached is None:
            removes: list[fb.ToDataplane] = []
            updates: list[fb.ToDataplane] = []
            for dst in self.dirty:
                facts = self._facts_for(dst)
                if facts.msg is None:
                    if self.existed(dst):
                        removes.append(route_remove(dst))
                else:
                    updates.append(self._seen_from(facts, group))
            cached = self._shared_changes[group] = (removes, updates)
        return cached

    def snapshot_for(self, me: str, local: set[str]) -> list[fb.ToDataplane]:
        """Every route node ``me`` has, with ``local`` its own workloads' destinations."""
        group = self._group(me)
        shared = self._shared_snapshot.get(group)
        if shared is None:
            shared = self._shared_snapshot[group] = [
                (dst, self._seen_from(self._facts_for(dst), group)) for dst in self.entries
            ]
        own = self._node_dsts.get(me)
        exceptions = (own | local) if own else local
        if exceptions:
            out = [m for dst, m in shared if dst not in exceptions]
            for dst in exceptions:
                msg = self.route_for(me, dst, dst in local)
                if msg is not None:
                    out.append(msg)
        else:
            out = [m for _, m in shared]
        return out

    def end_flush(self) -> None:
        self._invalidate()
        self._existed = {}
        self.dirty = set()
        self.nodes_changed = set()
        self.pools_changed = False


def _within(dst: str, net: IPNetwork) -> bool:
    d = _net(dst)
    return d.version == net.version and d.subnet_of(net)  # type: ignore[arg-type]


def _drop_tunnel(entry: RouteEntry, node: str, kind: str) -> None:
    kinds = entry.tunnels.get(node)
    if kinds is not None:
        kinds.discard(kind)
        if not kinds:
            del entry.tunnels[node]


def _discard(index: dict[str, set[str]], key: str, value: str) -> None:
    s = index.get(key)
    if s is not None:
        s.discard(value)
        if not s:
            del index[key]


def route_remove(dst: str) -> fb.ToDataplane:
    return fb.ToDataplane(route_remove=fb.RouteRemove(dst=dst))
