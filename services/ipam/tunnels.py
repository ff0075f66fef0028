"""Tunnel addresses of a node (IPIP, VXLAN, VXLAN over IPv6), as calico-node's tunnel-ip
allocator keeps them.

Each node holds at most one address per tunnel kind, under a fixed handle
(``ipip-tunnel-addr-<node>``, ``vxlan-tunnel-addr-<node>``, ``vxlan-v6-tunnel-addr-<node>``)
with attributes ``{"node": <node>, "type": "ipipTunnelAddress"|...}``, taken from an enabled pool
that selects the node, allows use ``Tunnel`` and has that encapsulation on (``ipipMode`` /
``vxlanMode`` not ``Never``). The address is written to the Node resource
(``spec.bgp.ipv4IPIPTunnelAddr``, ``spec.ipv4VXLANTunnelAddr``, ``spec.ipv6VXLANTunnelAddr``).

``ensure`` is idempotent: an address already on the Node that is allocated to the handle in an
eligible pool is kept; one on the Node but unallocated is re-assigned to the handle; anything
else is released and a new one allocated. With no eligible pool the address is released and
the field cleared. Node writes are compare-and-swap on ``resourceVersion`` with bounded
retries; a new address whose Node write fails is released again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from libcalico.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    RetriesExhaustedError,
    ValidationError,
)
from services.ipam.allocator import Allocator, AutoAssignArgs, parse_ip
from services.ipam.kvstore import Resource, ResourceStore
from services.ipam.pools import USE_TUNNEL, Pool, pool_for

log = logging.getLogger(__name__)

NODE_RETRIES = 20


@dataclass(frozen=True)
class TunnelKind:
    name: str
    version: int
    handle_prefix: str
    attr_type: str
    node_field: tuple[str, ...]
    pool_mode: str  # Pool attribute that must not be "Never"

    def handle(self, node: str) -> str:
        return f"{self.handle_prefix}{node}"


IPIP = TunnelKind(
    "IPIP", 4, "ipip-tunnel-addr-", "ipipTunnelAddress", ("spec", "bgp", "ipv4IPIPTunnelAddr"),
    "ipip_mode",
)
VXLAN = TunnelKind(
    "VXLAN", 4, "vxlan-tunnel-addr-", "vxlanTunnelAddress", ("spec", "ipv4VXLANTunnelAddr"),
    "vxlan_mode",
)
VXLAN_V6 = TunnelKind(
    "VXLAN_V6", 6, "vxlan-v6-tunnel-addr-", "vxlanV6TunnelAddress",
    ("spec", "ipv6VXLANTunnelAddr"), "vxlan_mode",
)
KINDS = {k.name: k for k in (IPIP, VXLAN, VXLAN_V6)}


def get_field(res: Resource, path: tuple[str, ...]) -> str:
    cur: Any = res
    for part in path:
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return str(cur) if cur else ""


def set_field(res: Resource, path: tuple[str, ...], value: str) -> None:
    cur = res
    for part in path[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            if not value:
                return
            nxt = cur[part] = {}
        cur = nxt
    if value:
        cur[path[-1]] = value
    else:
        cur.pop(path[-1], None)


class TunnelAddresses:
    def __init__(self, allocator: Allocator, resources: ResourceStore) -> None:
        self.allocator = allocator
        self.resources = resources

    async def _eligible_pools(self, node: Resource, kind: TunnelKind) -> list[Pool]:
        pools = await self.allocator.resources.pools(fresh=True)
        labels = (node.get("metadata", {}) or {}).get("labels") or {}
        return [
            p
            for p in pools
            if p.version == kind.version
            and not p.disabled
            and getattr(p, kind.pool_mode) not in ("", "Never")
            and USE_TUNNEL in p.allowed_uses
            and self.allocator.match(p.node_selector, labels)
        ]

    async def _node(self, name: str) -> Resource:
        res = await self.resources.get("Node", name)
        if res is None:
            raise NotFoundError(f"Node({name}) does not exist", resource=f"Node({name})")
        return res

    async def _write_node(self, name: str, kind: TunnelKind, value: str) -> None:
        for _ in range(NODE_RETRIES):
            res = await self._node(name)
            if get_field(res, kind.node_field) == value:
                return
            set_field(res, kind.node_field, value)
            try:
                await self.resources.update(res)
                return
            except ConflictError:
                continue
        raise RetriesExhaustedError(f"Node({name}) kept changing while writing its tunnel address")

    async def ensure(self, node_name: str, kind: TunnelKind) -> str:
        """The node's tunnel address of this kind ("" when no pool calls for one)."""
        if not node_name:
            raise ValidationError("node is required")
        node = await self._node(node_name)
        handle = kind.handle(node_name)
        pools = await self._eligible_pools(node, kind)
        current = get_field(node, kind.node_field)
        if not pools:
            if current or await self._holds(handle):
                await self.release(node_name, kind)
            return ""
        if current:
            try:
                ip = parse_ip(current)
            except ValidationError:
                ip = None
            if ip is not None and pool_for(pools, ip) is not None:
                a = await self.allocator.get_assignment(str(ip))
                if a.allocated and a.handle == handle:
                    return str(ip)
                if not a.allocated:
                    try:
                        attrs = self._attrs(kind, node_name)
                        await self.allocator.assign_ip(str(ip), handle, attrs, node_name)
                        return str(ip)
                    except (AlreadyExistsError, ValidationError) as exc:
                        log.info("tunnel address %s of %s cannot be kept: %s", ip, node_name, exc)
        await self.allocator.release_by_handle(handle)
        args = AutoAssignArgs(
            node=node_name,
            num4=1 if kind.version == 4 else 0,
            num6=1 if kind.version == 6 else 0,
            handle=handle,
            attrs=self._attrs(kind, node_name),
            ipv4_pools=[p.name or str(p.cidr) for p in pools] if kind.version == 4 else [],
            ipv6_pools=[p.name or str(p.cidr) for p in pools] if kind.version == 6 else [],
            use=USE_TUNNEL,
        )
        result = await self.allocator.auto_assign(args)
        addr = (result.ipv4 or result.ipv6)[0].split("/", 1)[0]
        try:
            await self._write_node(node_name, kind, addr)
        except BaseException:
            await self.allocator.release_by_handle(handle)
            raise
        log.info("node %s: %s tunnel address %s", node_name, kind.name, addr)
        return addr

    async def release(self, node_name: str, kind: TunnelKind) -> str:
        """Release the tunnel address and clear it from the Node; returns what was released."""
        handle = kind.handle(node_name)
        released = await self.allocator.release_by_handle(handle)
        current = ""
        node = await self.resources.get("Node", node_name)
        if node is not None:
            current = get_field(node, kind.node_field)
            if current:
                await self._write_node(node_name, kind, "")
        return current or (released[0] if released else "")

    async def _holds(self, handle: str) -> bool:
        return await self.allocator.get_handle(handle) is not None

    @staticmethod
    def _attrs(kind: TunnelKind, node: str) -> dict[str, str]:
        return {"node": node, "type": kind.attr_type}
