"""Dataplane passthru: Node -> HostMetadataUpdate, IPPool -> IPAMPoolUpdate, for every node.

As Felix's ``DataplanePassthru``: no calculation, just the cluster-wide facts a dataplane needs
(host addresses for the all-hosts IP set and IPIP sources, pools for NAT-outgoing and
encapsulation). ``HostMetadataUpdate.ipv4_addr``/``ipv6_addr`` carry the address without its
prefix length, as Felix's original host-IP message did. Pool IDs are the CIDR with ``/``
replaced by ``-`` (``10.65.0.0-16``), Felix's ``cidrToIPPoolID``.
"""

from __future__ import annotations

from typing import Any

from libcalico.api.felix import felixbackend_pb2 as fb

from .keyed_state import KeyedMessages


def node_addresses(value: dict[str, Any]) -> tuple[str, str, str, str]:
    """(ipv4 address, ipv4 CIDR, ipv6 address, ipv6 CIDR) of a Node, "" where unknown.

    ``spec.bgp.ipv4Address``/``ipv6Address`` (CIDR form) first, then ``spec.addresses``
    (InternalIP before ExternalIP), as Felix's route resolver does.
    """
    spec = value.get("spec") or {}
    bgp = spec.get("bgp") or {}
    v4 = str(bgp.get("ipv4Address") or "")
    v6 = str(bgp.get("ipv6Address") or "")
    if not v4 or not v6:
        addrs = spec.get("addresses") or ()
        for want in ("InternalIP", "ExternalIP"):
            for a in addrs:
                if str(a.get("type") or "") != want:
                    continue
                text = str(a.get("address") or "")
                if ":" in text and not v6:
                    v6 = text
                elif text and ":" not in text and not v4:
                    v4 = text
    return (_addr(v4), _cidr(v4, 32), _addr(v6), _cidr(v6, 128))


def _addr(text: str) -> str:
    return text.split("/", 1)[0]


def _cidr(text: str, full: int) -> str:
    if not text:
        return ""
    return text if "/" in text else f"{text}/{full}"


def pool_id(cidr: str) -> str:
    return cidr.replace("/", "-", 1)


class Passthru:
    def __init__(self) -> None:
        self.hosts: KeyedMessages[str] = KeyedMessages(
            lambda name: fb.ToDataplane(host_metadata_remove=fb.HostMetadataRemove(hostname=name))
        )
        self.pools: KeyedMessages[str] = KeyedMessages(
            lambda pid: fb.ToDataplane(ipam_pool_remove=fb.IPAMPoolRemove(id=pid))
        )
        self._pool_ids: dict[str, str] = {}  # pool name -> id

    def on_node(self, name: str, value: dict[str, Any] | None) -> None:
        msg = None
        if value is not None:
            v4, _, v6, _ = node_addresses(value)
            bgp = (value.get("spec") or {}).get("bgp") or {}
            labels = (value.get("metadata") or {}).get("labels") or {}
            asn = bgp.get("asNumber")
            msg = fb.ToDataplane(
                host_metadata_update=fb.HostMetadataUpdate(
                    hostname=name,
                    ipv4_addr=v4,
                    ipv6_addr=v6,
                    asnumber="" if asn is None else str(asn),
                    labels={str(k): str(v) for k, v in labels.items()},
                )
            )
        self.hosts.set(name, msg)

    def on_pool(self, name: str, value: dict[str, Any] | None) -> None:
        old_id = self._pool_ids.pop(name, None)
        new_id = None
        if value is not None:
            spec = value.get("spec") or {}
            cidr = str(spec.get("cidr") or "")
            if cidr:
                new_id = pool_id(cidr)
                self._pool_ids[name] = new_id
                self.pools.set(
                    new_id,
                    fb.ToDataplane(
                        ipam_pool_update=fb.IPAMPoolUpdate(
                            id=new_id,
                            pool=fb.IPAMPool(
                                cidr=cidr,
                                masquerade=bool(spec.get("natOutgoing")),
                                ipip_mode=str(spec.get("ipipMode") or "Never"),
                                vxlan_mode=str(spec.get("vxlanMode") or "Never"),
                                allowed_uses=[str(u) for u in spec.get("allowedUses") or ()],
                            ),
                        )
                    ),
                )
        if old_id is not None and old_id != new_id and old_id not in self._pool_ids.values():
            self.pools.set(old_id, None)

    def end_flush(self) -> None:
        self.hosts.end_flush()
        self.pools.end_flush()
