"""BGP view: what a node's BGP driver needs to render BIRD's config, as one ``BGPUpdate``.

Cluster-wide parts (every node's BGP facts, BGPConfiguration and BGPPeer JSON, enabled pools)
are shared; per-node parts are the blocks affine to the node with a *confirmed* affinity and the
addresses the node has borrowed from other nodes' blocks (from the route resolver). The whole
view is rebuilt for a node only when something it contains changed since the last flush; a
BGP subscriber keeps only the newest view, so a slow one never holds up the graph.

Disabled pools are left out, so BIRD neither exports nor programs them.
"""

from __future__ import annotations

import json
from typing import Any

from libcalico.api.calcgraph.v1 import calcgraph_pb2 as cg
from libcalico.api.felix import felixbackend_pb2 as fb

from .route_resolver import RouteResolver


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class BGPView:
    def __init__(self, routes: RouteResolver) -> None:
        self._routes = routes
        self.nodes: dict[str, cg.BGPNode] = {}
        self.configurations: dict[str, bytes] = {}
        self.peers: dict[str, bytes] = {}
        self.pools: dict[str, fb.IPAMPool] = {}
        self.local_blocks: dict[str, set[str]] = {}
        self.global_dirty = False
        self.dirty_nodes: set[str] = set()
        self._borrowed_seen: dict[str, frozenset[str]] = {}

    def on_node(self, name: str, value: dict[str, Any] | None) -> None:
        node = None
        if value is not None:
            spec = value.get("spec") or {}
            bgp = spec.get("bgp") or {}
            asn = bgp.get("asNumber")
            node = cg.BGPNode(
                name=name,
                ipv4_address=str(bgp.get("ipv4Address") or ""),
                ipv6_address=str(bgp.get("ipv6Address") or ""),
                as_number="" if asn is None else str(asn),
                route_reflector_cluster_id=str(bgp.get("routeReflectorClusterID") or ""),
                labels={
                    str(k): str(v)
                    for k, v in ((value.get("metadata") or {}).get("labels") or {}).items()
                },
                ipv4_ipip_tunnel_addr=str(bgp.get("ipv4IPIPTunnelAddr") or ""),
            )
        self._set(self.nodes, name, node)

    def on_bgp_configuration(self, ns: str, name: str, value: dict[str, Any] | None) -> None:
        self._set(self.configurations, name, _json(value) if value is not None else None)

    def on_bgp_peer(self, ns: str, name: str, value: dict[str, Any] | None) -> None:
        self._set(self.peers, name, _json(value) if value is not None else None)

    def on_pool(self, name: str, value: dict[str, Any] | None) -> None:
        pool = None
        if value is not None:
            spec = value.get("spec") or {}
            if spec.get("cidr") and not spec.get("disabled"):
                pool = fb.IPAMPool(
                    cidr=str(spec["cidr"]),
                    masquerade=bool(spec.get("natOutgoing")),
                    ipip_mode=str(spec.get("ipipMode") or "Never"),
                    vxlan_mode=str(spec.get("vxlanMode") or "Never"),
                    allowed_uses=[str(u) for u in spec.get("allowedUses") or ()],
                )
        self._set(self.pools, name, pool)

    def on_affinity(self, host: str, cidr: str, value: dict[str, Any] | None) -> None:
        confirmed = (
            value is not None
            and not value.get("deleted")
            and str(value.get("state") or "confirmed") == "confirmed"
        )
        blocks = self.local_blocks.setdefault(host, set())
        if confirmed == (cidr in blocks):
            return
        if confirmed:
            blocks.add(cidr)
        else:
            blocks.discard(cidr)
            if not blocks:
                del self.local_blocks[host]
        self.dirty_nodes.add(host)

    def _set(self, table: dict[str, Any], key: str, value: Any) -> None:
        old = table.get(key)
        if value is None:
            if old is None:
                return
            del table[key]
        else:
            if old == value:
                return
            table[key] = value
        self.global_dirty = True

    def is_dirty(self, node: str) -> bool:
        if self.global_dirty or node in self.dirty_nodes:
            return True
        borrowed = frozenset(self._routes.borrowed_by_node.get(node, ()))
        return borrowed != self._borrowed_seen.get(node, frozenset())

    def update_for(self, node: str, in_sync: bool) -> cg.BGPUpdate:
        borrowed = frozenset(self._routes.borrowed_by_node.get(node, ()))
        self._borrowed_seen[node] = borrowed
        return cg.BGPUpdate(
            in_sync=in_sync,
            nodes=[self.nodes[n] for n in sorted(self.nodes)],
            bgp_configurations=[self.configurations[n] for n in sorted(self.configurations)],
            bgp_peers=[self.peers[n] for n in sorted(self.peers)],
            pools=[self.pools[n] for n in sorted(self.pools)],
            local_blocks=sorted(self.local_blocks.get(node, ())),
            borrowed_ips=sorted(borrowed),
        )

    def forget(self, node: str) -> None:
        self._borrowed_seen.pop(node, None)

    def end_flush(self) -> None:
        self.global_dirty = False
        self.dirty_nodes = set()
