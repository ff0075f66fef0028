"""Blackhole routes for this node's IPAM blocks (VXLAN and IPIP pools).

A block affine to this node arrives as a ``RouteUpdate`` with the ``LOCAL_WORKLOAD`` bit and a
block-sized destination. Traffic for an address in the block that has no pod (no /32 route)
must not leak out of the default route, so the block gets ``blackhole <block> proto 80``, as
Felix does in VXLAN and IPIP modes (in BGP-only mode BIRD's static protocol does this).
Borrowed /32s and this node's own workload /32s are more specific and are never blackholed.
"""

from __future__ import annotations

from libcalico.api.felix import felixbackend_pb2 as fb

from .owners.routes import RouteClass, RouteTarget
from .state import ClusterState

ENCAP_POOLS = (fb.VXLAN, fb.IPIP)


def _host_prefix(dst: str) -> bool:
    return dst.endswith("/32") or dst.endswith("/128") or "/" not in dst


class BlockManager:
    def __init__(self, routes: RouteClass) -> None:
        self._routes = routes

    def reset(self) -> None:
        self._routes.reset()

    def prepare(self, st: ClusterState) -> None:
        desired: dict[str, RouteTarget] = {}
        for dst, r in st.routes.items():
            if not (r.types & fb.LOCAL_WORKLOAD) or r.local_workload or r.borrowed:
                continue
            if r.ip_pool_type not in ENCAP_POOLS or _host_prefix(dst):
                continue
            if r.dst_node_name and r.dst_node_name != st.node:
                continue
            desired[dst] = RouteTarget.blackhole()
        self._routes.sync(desired)

    @property
    def blackholes(self) -> set[str]:
        return set(self._routes.routes)
