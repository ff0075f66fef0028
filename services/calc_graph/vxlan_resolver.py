"""VXLAN resolver: one ``VXLANTunnelEndpointUpdate`` per node that has a VXLAN tunnel address.

A VTEP needs the node's tunnel address (``spec.ipv4VXLANTunnelAddr``), its host address (the
parent device IP) and a MAC: ``spec.vxlanTunnelMACAddr`` when set, otherwise derived as Felix
does, ``0x66`` followed by the first five bytes of SHA-1(node name), printed as lower-case
colon-separated hex. IPv6 is the same with ``ipv6VXLANTunnelAddr``, ``vxlanTunnelMACAddrV6`` and
the name hashed as ``<node>-v6``. Every node gets every VTEP (including its own, which its
dataplane ignores); a changed VTEP is simply re-sent.
"""

from __future__ import annotations

import hashlib
from typing import Any

from libcalico.api.felix import felixbackend_pb2 as fb

from .keyed_state import KeyedMessages
from .passthru import node_addresses


def vtep_mac(node: str, ip_version: int = 4) -> str:
    """Felix's deterministic VTEP MAC for a node."""
    name = node if ip_version == 4 else f"{node}-v6"
    digest = hashlib.sha1(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in bytes([0x66]) + digest[:5])


class VXLANResolver:
    def __init__(self) -> None:
        self.vteps: KeyedMessages[str] = KeyedMessages(
            lambda node: fb.ToDataplane(vtep_remove=fb.VXLANTunnelEndpointRemove(node=node))
        )

    def on_node(self, name: str, value: dict[str, Any] | None) -> None:
        msg = None
        if value is not None:
            spec = value.get("spec") or {}
            v4, _, v6, _ = node_addresses(value)
            tun4 = str(spec.get("ipv4VXLANTunnelAddr") or "").split("/", 1)[0]
            tun6 = str(spec.get("ipv6VXLANTunnelAddr") or "").split("/", 1)[0]
            vtep = fb.VXLANTunnelEndpointUpdate(node=name)
            if tun4 and v4:
                vtep.ipv4_addr = tun4
                vtep.parent_device_ip = v4
                vtep.mac = str(spec.get("vxlanTunnelMACAddr") or "") or vtep_mac(name, 4)
            if tun6 and v6:
                vtep.ipv6_addr = tun6
                vtep.parent_device_ipv6 = v6
                vtep.mac_v6 = str(spec.get("vxlanTunnelMACAddrV6") or "") or vtep_mac(name, 6)
            if vtep.ipv4_addr or vtep.ipv6_addr:
                msg = fb.ToDataplane(vtep_update=vtep)
        self.vteps.set(name, msg)

    def end_flush(self) -> None:
        self.vteps.end_flush()
