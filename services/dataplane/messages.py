"""Builders for the routing messages a driver consumes (tests, bench, docs).

Policy-side builders (endpoints, policies, profiles, IP sets, pools, host metadata) live in
``services.policy.examples``; these cover routes, VTEPs, encapsulation and in-sync, with
Felix's field names.
"""

from __future__ import annotations

import hashlib

from libcalico.api.felix import felixbackend_pb2 as fb

VXLAN = fb.VXLAN
IPIP = fb.IPIP
NO_ENCAP = fb.NO_ENCAP


def in_sync() -> fb.ToDataplane:
    return fb.ToDataplane(in_sync=fb.InSync())


def encap(vxlan: bool = False, ipip: bool = False) -> fb.ToDataplane:
    return fb.ToDataplane(encapsulation=fb.Encapsulation(vxlan_enabled=vxlan,
                                                         ipip_enabled=ipip))


def config(**params: str) -> fb.ToDataplane:
    return fb.ToDataplane(config_update=fb.ConfigUpdate(config=params))


def pool(pool_id: str, cidr: str, *, vxlan: str = "Never", ipip: str = "Never",
         masquerade: bool = False) -> fb.ToDataplane:
    return fb.ToDataplane(ipam_pool_update=fb.IPAMPoolUpdate(
        id=pool_id, pool=fb.IPAMPool(cidr=cidr, masquerade=masquerade, vxlan_mode=vxlan,
                                     ipip_mode=ipip)))


def vtep_mac(node: str) -> str:
    digest = hashlib.sha1(node.encode()).digest()
    return ":".join(f"{b:02x}" for b in bytes([0x66]) + digest[:5])


def vtep(node: str, tunnel_ip: str, node_ip: str, mac: str = "") -> fb.ToDataplane:
    return fb.ToDataplane(vtep_update=fb.VXLANTunnelEndpointUpdate(
        node=node, mac=mac or vtep_mac(node), ipv4_addr=tunnel_ip, parent_device_ip=node_ip))


def vtep_remove(node: str) -> fb.ToDataplane:
    return fb.ToDataplane(vtep_remove=fb.VXLANTunnelEndpointRemove(node=node))


def route(dst: str, *, types: int, node: str = "", node_ip: str = "",
          pool_type: int = fb.VXLAN, same_subnet: bool = False, nat_outgoing: bool = False,
          local_workload: bool = False, borrowed: bool = False) -> fb.ToDataplane:
    r = fb.RouteUpdate(dst=dst, dst_node_name=node, dst_node_ip=node_ip,
                       same_subnet=same_subnet, nat_outgoing=nat_outgoing,
                       local_workload=local_workload, borrowed=borrowed)
    r.ip_pool_type = pool_type  # type: ignore[assignment]
    r.types = types  # type: ignore[assignment]
    return fb.ToDataplane(route_update=r)


def local_block(dst: str, node: str, node_ip: str, pool_type: int = fb.VXLAN) -> fb.ToDataplane:
    return route(dst, types=fb.LOCAL_WORKLOAD, node=node, node_ip=node_ip, pool_type=pool_type)


def remote_block(dst: str, node: str, node_ip: str, pool_type: int = fb.VXLAN,
                 same_subnet: bool = False) -> fb.ToDataplane:
    return route(dst, types=fb.REMOTE_WORKLOAD, node=node, node_ip=node_ip,
                 pool_type=pool_type, same_subnet=same_subnet)


def route_remove(dst: str) -> fb.ToDataplane:
    return fb.ToDataplane(route_remove=fb.RouteRemove(dst=dst))
