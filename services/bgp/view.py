"""The BGP view a node's driver renders from: calc_graph's ``BGPUpdate`` as plain values.

Decoding happens once per update so the peer calculation and the renderer work on frozen
Python objects and can be unit-tested without protobuf.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from libcalico.api.calcgraph.v1 import calcgraph_pb2

DEFAULT_AS = "64512"


@dataclass(frozen=True)
class BGPNodeInfo:
    name: str
    ipv4: str  # address only, "" when the node has none
    ipv4_cidr: str  # as in Node.spec.bgp.ipv4Address, e.g. 10.0.0.1/24
    asn: str  # "" inherits the global AS
    rr_cluster_id: str
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=True)


@dataclass(frozen=True)
class PoolInfo:
    cidr: str
    ipip_mode: str
    vxlan_mode: str
    disabled: bool = False
    disable_bgp_export: bool = False

    @property
    def no_encap(self) -> bool:
        return self.ipip_mode in ("", "Never") and self.vxlan_mode in ("", "Never")


@dataclass(frozen=True)
class BGPView:
    node: str
    nodes: dict[str, BGPNodeInfo]
    configurations: dict[str, dict[str, Any]]  # BGPConfiguration by name
    peers: list[dict[str, Any]]  # BGPPeer resources
    pools: list[PoolInfo]
    local_blocks: list[str]
    borrowed_ips: list[str]
    in_sync: bool = True

    @property
    def me(self) -> BGPNodeInfo | None:
        return self.nodes.get(self.node)

    def global_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.configurations.get("default", {}).get("spec", {})
        return spec

    def node_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.configurations.get(f"node.{self.node}", {}).get("spec", {})
        return spec

    def mesh_enabled(self) -> bool:
        return bool(self.global_spec().get("nodeToNodeMeshEnabled", True))

    def global_as(self) -> str:
        return str(self.global_spec().get("asNumber") or DEFAULT_AS)

    def as_of(self, node: BGPNodeInfo) -> str:
        return node.asn or self.global_as()

    def listen_port(self) -> int | None:
        port = self.node_spec().get("listenPort") or self.global_spec().get("listenPort")
        return int(port) if port else None


def _address(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip) if cidr else ""


def view_from_proto(node: str, update: calcgraph_pb2.BGPUpdate) -> BGPView:
    nodes = {
        n.name: BGPNodeInfo(
            name=n.name,
            ipv4=_address(n.ipv4_address),
            ipv4_cidr=n.ipv4_address,
            asn=n.as_number,
            rr_cluster_id=n.route_reflector_cluster_id,
            labels=dict(n.labels),
        )
        for n in update.nodes
    }
    configs: dict[str, dict[str, Any]] = {}
    for raw in update.bgp_configurations:
        res = json.loads(raw)
        configs[res["metadata"]["name"]] = res
    peers = [json.loads(raw) for raw in update.bgp_peers]
    pools = [
        PoolInfo(cidr=p.cidr, ipip_mode=p.ipip_mode, vxlan_mode=p.vxlan_mode) for p in update.pools
    ]
    return BGPView(
        node=node,
        nodes=nodes,
        configurations=configs,
        peers=peers,
        pools=pools,
        local_blocks=list(update.local_blocks),
        borrowed_ips=list(update.borrowed_ips),
        in_sync=update.in_sync,
    )
