"""Which BGP sessions a node has: the node-to-node mesh, route reflectors and BGPPeers.

Follows Calico's confd rules (shared/reference/calico.md §6):

- Mesh: when ``nodeToNodeMeshEnabled`` (default true) and this node is not a route reflector,
  one ``Mesh_<ip>`` peer per other node with an IPv4 address that is not a reflector either.
  The side whose address string-compares lower is ``passive``, so only the higher side dials.
- BGPPeer: applies to this node when its ``node`` names it, its ``nodeSelector`` matches it, or
  neither is set (global). It peers with ``peerIP``/``asNumber``, or with every other node its
  ``peerSelector`` matches. Names are ``Global_<ip>`` or ``Node_<ip>``; global peers are
  considered first and a second session to the same address is skipped.
- Reverse peering: a ``peerSelector`` peering between Calico nodes is two-way unless
  ``reversePeering: Manual``. A node the selector picks peers back (``Node_<ip>``) with every
  node the BGPPeer applies to. That is what lets the walkthrough's single BGPPeer
  (``nodeSelector: all()``, ``peerSelector: route-reflector == "true"``) give the reflector
  its clients, without a second BGPPeer.
- A route reflector (``routeReflectorClusterID``) makes every iBGP peer outside its cluster a
  ``rr client`` of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libcalico.selector import parse

from .view import BGPNodeInfo, BGPView

MESH = "node-to-node mesh"
NODE = "node specific"
GLOBAL = "global"
_PREFIX = {MESH: "Mesh_", NODE: "Node_", GLOBAL: "Global_"}


@dataclass(frozen=True)
class Peer:
    ip: str
    asn: str
    kind: str  # MESH, NODE or GLOBAL
    passive: bool = False
    rr_cluster_id: str = ""  # set: this peer is our route-reflector client
    port: int | None = None
    keep_next_hop: bool = False

    @property
    def name(self) -> str:
        base = _PREFIX[self.kind] + self.ip.replace(".", "_").replace(":", "_")
        return f"{base}_port_{self.port}" if self.port else base


def split_peer_ip(value: str) -> tuple[str, int | None]:
    """``10.0.0.1``, ``10.0.0.1:1790``, ``[fd00::1]:1790`` or ``fd00::1`` → (ip, port)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, None


def _selects(selector: str, node: BGPNodeInfo) -> bool:
    return parse(selector).evaluate(node.labels)


def _applies_to(peer: dict[str, Any], node: BGPNodeInfo) -> tuple[bool, str]:
    spec = peer.get("spec", {})
    if spec.get("node"):
        return spec["node"] == node.name, NODE
    if spec.get("nodeSelector"):
        return _selects(spec["nodeSelector"], node), NODE
    return True, GLOBAL


def _reverse(spec: dict[str, Any]) -> bool:
    return bool(spec.get("peerSelector")) and spec.get("reversePeering") != "Manual"


def compute_peers(view: BGPView) -> list[Peer]:
    me = view.me
    if me is None or not me.ipv4:
        return []
    my_as = view.as_of(me)
    peers: dict[str, Peer] = {}

    def add(ip: str, asn: str, kind: str, other: BGPNodeInfo | None, spec: dict[str, Any]) -> None:
        if not ip or ip == me.ipv4 or ip in peers:
            return
        rr = ""
        if me.rr_cluster_id and asn == my_as:
            if other is None or other.rr_cluster_id != me.rr_cluster_id:
                rr = me.rr_cluster_id
        port = spec.get("peerPort") or spec.get("port")
        peers[ip] = Peer(
            ip=ip,
            asn=asn,
            kind=kind,
            passive=kind == MESH and ip > me.ipv4,
            rr_cluster_id=rr,
            port=int(port) if port else None,
            keep_next_hop=bool(spec.get("keepOriginalNextHop"))
            or spec.get("nextHopMode") == "Keep",
        )

    # Global BGPPeers first, then node-specific ones, then the mesh (Calico's order). A
    # BGPPeer that does not apply to this node may still select it: then it is the reverse
    # side of that peering.
    applicable: list[tuple[str, bool, dict[str, Any]]] = []
    for peer in view.peers:
        ok, kind = _applies_to(peer, me)
        if ok or _reverse(peer.get("spec", {})):
            applicable.append((kind, ok, peer))
    applicable.sort(key=lambda kp: (kp[0] != GLOBAL, kp[2].get("metadata", {}).get("name", "")))
    others = sorted((n for n in view.nodes.values() if n.name != me.name), key=lambda n: n.name)
    for kind, ok, peer in applicable:
        spec = peer.get("spec", {})
        if ok and spec.get("peerIP"):
            ip, port = split_peer_ip(str(spec["peerIP"]))
            if port:
                spec = {**spec, "peerPort": port}
            other = next((n for n in view.nodes.values() if n.ipv4 == ip), None)
            add(ip, str(spec.get("asNumber") or my_as), kind, other, spec)
        elif ok and spec.get("peerSelector"):
            for other in others:
                if _selects(spec["peerSelector"], other):
                    add(other.ipv4, view.as_of(other), kind, other, spec)
        if _reverse(spec) and _selects(spec["peerSelector"], me):
            for other in others:
                if _applies_to(peer, other)[0]:
                    add(other.ipv4, view.as_of(other), NODE, other, spec)

    if view.mesh_enabled() and not me.rr_cluster_id:
        for other in sorted(view.nodes.values(), key=lambda n: n.name):
            if other.name == me.name or other.rr_cluster_id:
                continue
            add(other.ipv4, view.as_of(other), MESH, other, {})
    return list(peers.values())
