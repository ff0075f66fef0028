"""IPIP: the ``tunl0`` device and routes to remote blocks in IPIP pools.

``tunl0`` is the ipip module's fallback device (it exists as soon as the module is loaded;
creating ``tunl0`` of kind ``ipip`` loads it where allowed). It gets this node's IPIP tunnel
address (``IpInIpTunnelAddr``, or the ``LOCAL_TUNNEL`` route with the ipip flag) as a /32, MTU
``IpInIpMtu`` or host MTU - 20, and is set up; it is never deleted.

Routes, as Felix programs IPIP cluster routes (``programClusterRoutes``): a remote workload
block in an IPIP pool goes ``via <node IP> dev tunl0 onlink proto 80``; with CrossSubnet a node
on the same subnet is reached directly ``via <node IP> dev <parent>``.
"""

from __future__ import annotations

from collections.abc import Callable

from libcalico.api.felix import felixbackend_pb2 as fb

from .owners.links import DeviceOwner, DeviceSpec
from .owners.routes import RouteClass, RouteTarget
from .state import ClusterState

DEVICE = "tunl0"
IPIP_OVERHEAD = 20


def tunnel_address(st: ClusterState) -> str:
    if st.params.ipip_tunnel_addr:
        return st.params.ipip_tunnel_addr.split("/", 1)[0]
    for dst, r in st.routes.items():
        if r.types & fb.LOCAL_TUNNEL and r.tunnel_type.ipip and r.dst_node_name == st.node:
            return dst.split("/", 1)[0]
    return ""


class IPIPManager:
    def __init__(self, device: DeviceOwner, routes: RouteClass) -> None:
        self.device = device
        self._routes = routes

    def reset(self) -> None:
        self._routes.reset()

    def prepare(self, st: ClusterState, host_mtu: int,
                iface_of: Callable[[str], str | None]) -> None:
        if not st.ipip_enabled:
            self.device.set(None)
            self._routes.sync({})
            return
        addr = tunnel_address(st)
        self.device.set(DeviceSpec(
            name=DEVICE, kind="ipip", mtu=st.params.ipip_mtu or host_mtu - IPIP_OVERHEAD,
            addresses=(f"{addr}/32",) if addr else (),
        ))
        parent = iface_of(st.my_ipv4) if st.my_ipv4 else None
        desired: dict[str, RouteTarget] = {}
        for dst, r in st.routes.items():
            if ":" in dst or not (r.types & fb.REMOTE_WORKLOAD) or r.ip_pool_type != fb.IPIP:
                continue
            if not r.dst_node_ip or r.dst_node_name == st.node:
                continue
            if r.same_subnet and parent:
                desired[dst] = RouteTarget.via(r.dst_node_ip, parent)
            else:
                desired[dst] = RouteTarget.via(r.dst_node_ip, DEVICE, onlink=True)
        self._routes.sync(desired)

    @property
    def routes(self) -> dict[str, RouteTarget]:
        return self._routes.routes
