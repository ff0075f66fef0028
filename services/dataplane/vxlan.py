"""VXLAN: the ``vxlan.calico`` device, VTEP neighbours and FDB entries, and routes to remote
blocks (Felix's ``vxlan_mgr.go``).

From this node's ``VXLANTunnelEndpointUpdate``: the device (VNI ``VXLANVNI`` 4096, UDP
``VXLANPort`` 4789, learning off, local address and parent device = this node's address, MAC
= the VTEP MAC, MTU = ``VXLANMTU`` or host MTU - 50, address = the VTEP IP /32).

For every other node's VTEP: a permanent neighbour entry VTEP IP → VTEP MAC and an FDB entry
VTEP MAC → node IP on ``vxlan.calico``, so no ARP or flooding crosses the tunnel.

For every ``RouteUpdate`` of a remote workload block (or borrowed /32) in a VXLAN pool:
``<dst> via <remote VTEP IP> dev vxlan.calico onlink proto 80``; with CrossSubnet, a node on
the same subnet (``same_subnet``) is reached directly: ``<dst> via <node IP> dev <parent>``.
A route whose node has no VTEP yet is left out until the VTEP arrives (the stream sends VTEPs
before the routes that use them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from libcalico.api.felix import felixbackend_pb2 as fb

from .owners.links import DeviceOwner, DeviceSpec, VxlanParams
from .owners.routes import FdbOwner, NeighbourOwner, RouteClass, RouteTarget
from .state import ClusterState

log = logging.getLogger(__name__)

DEVICE = "vxlan.calico"
VXLAN_OVERHEAD = 50


class VXLANManager:
    def __init__(self, device: DeviceOwner, neighbours: NeighbourOwner, fdb: FdbOwner,
                 routes: RouteClass) -> None:
        self.device = device
        self.neighbours = neighbours
        self.fdb = fdb
        self._routes = routes

    def reset(self) -> None:
        self._routes.reset()

    def prepare(self, st: ClusterState, host_mtu: int,
                iface_of: Callable[[str], str | None]) -> None:
        me = st.vteps.get(st.node)
        if me is None or not me.ipv4_addr or not st.vxlan_enabled:
            self.device.set(None)
            self.neighbours.replace_all({})
            self.fdb.replace_all({})
            self._routes.sync({})
            return
        parent = iface_of(me.parent_device_ip)
        if parent is None:
            log.warning("no interface has this node's address %s; VXLAN waits",
                        me.parent_device_ip)
            return
        p = st.params
        self.device.set(DeviceSpec(
            name=DEVICE, kind="vxlan", mtu=p.vxlan_mtu or host_mtu - VXLAN_OVERHEAD,
            addresses=(f"{me.ipv4_addr}/32",), mac=me.mac,
            vxlan=VxlanParams(vni=p.vxlan_vni, port=p.vxlan_port, local=me.parent_device_ip,
                              parent=parent),
        ))
        remote = {n: v for n, v in st.vteps.items() if n != st.node and v.ipv4_addr}
        self.neighbours.replace_all({v.ipv4_addr: v.mac for v in remote.values()})
        self.fdb.replace_all({v.mac: v.parent_device_ip for v in remote.values()})
        desired: dict[str, RouteTarget] = {}
        for dst, r in st.routes.items():
            if ":" in dst or not (r.types & fb.REMOTE_WORKLOAD) or r.ip_pool_type != fb.VXLAN:
                continue
            if not r.dst_node_name or r.dst_node_name == st.node:
                continue
            if r.same_subnet and r.dst_node_ip:
                desired[dst] = RouteTarget.via(r.dst_node_ip, parent)
                continue
            vtep = remote.get(r.dst_node_name)
            if vtep is not None:
                desired[dst] = RouteTarget.via(vtep.ipv4_addr, DEVICE, onlink=True)
        self._routes.sync(desired)

    @property
    def routes(self) -> dict[str, RouteTarget]:
        return self._routes.routes
