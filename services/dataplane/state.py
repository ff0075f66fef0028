"""What the driver knows about the cluster from the stream, apart from policy.

Routes (``RouteUpdate`` by destination), VTEPs (by node), host metadata (by node), IP pools,
the ``Encapsulation`` message and Felix's parameters. The route managers (blocks, VXLAN, IPIP)
derive their desired kernel state from this on each apply in which it changed; they are pure
functions of it, so a new stream generation (``reset``) followed by the snapshot rebuilds the
same desired state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libcalico.api.felix import felixbackend_pb2 as fb

from .config import FelixParams

HANDLED = frozenset({
    "route_update", "route_remove", "vtep_update", "vtep_remove", "host_metadata_update",
    "host_metadata_remove", "ipam_pool_update", "ipam_pool_remove", "encapsulation",
    "config_update",
})


@dataclass
class ClusterState:
    node: str
    params: FelixParams = field(default_factory=FelixParams)
    routes: dict[str, fb.RouteUpdate] = field(default_factory=dict)
    vteps: dict[str, fb.VXLANTunnelEndpointUpdate] = field(default_factory=dict)
    hosts: dict[str, fb.HostMetadataUpdate] = field(default_factory=dict)
    pools: dict[str, fb.IPAMPool] = field(default_factory=dict)
    encap: fb.Encapsulation | None = None
    dirty: bool = True
    config_changed: bool = False

    def on_message(self, msg: fb.ToDataplane, kind: str) -> None:
        if kind == "route_update":
            self.routes[msg.route_update.dst] = msg.route_update
        elif kind == "route_remove":
            self.routes.pop(msg.route_remove.dst, None)
        elif kind == "vtep_update":
            self.vteps[msg.vtep_update.node] = msg.vtep_update
        elif kind == "vtep_remove":
            self.vteps.pop(msg.vtep_remove.node, None)
        elif kind == "host_metadata_update":
            self.hosts[msg.host_metadata_update.hostname] = msg.host_metadata_update
        elif kind == "host_metadata_remove":
            self.hosts.pop(msg.host_metadata_remove.hostname, None)
        elif kind == "ipam_pool_update":
            self.pools[msg.ipam_pool_update.id] = msg.ipam_pool_update.pool
        elif kind == "ipam_pool_remove":
            self.pools.pop(msg.ipam_pool_remove.id, None)
        elif kind == "encapsulation":
            self.encap = msg.encapsulation
            self.config_changed = True
        elif kind == "config_update":
            self.params = FelixParams().with_config(msg.config_update.config)
            self.config_changed = True
        self.dirty = True

    def reset(self) -> None:
        self.routes.clear()
        self.vteps.clear()
        self.hosts.clear()
        self.pools.clear()
        self.encap = None
        self.dirty = True

    @property
    def my_ipv4(self) -> str:
        h = self.hosts.get(self.node)
        if h is not None and h.ipv4_addr:
            return h.ipv4_addr.split("/", 1)[0]
        v = self.vteps.get(self.node)
        return v.parent_device_ip if v is not None else ""

    @property
    def vxlan_enabled(self) -> bool:
        if self.encap is not None and self.encap.vxlan_enabled:
            return True
        if self.params.vxlan_enabled:
            return True
        return any(p.vxlan_mode not in ("", "Never") for p in self.pools.values())

    @property
    def ipip_enabled(self) -> bool:
        if self.encap is not None and self.encap.ipip_enabled:
            return True
        if self.params.ipip_enabled:
            return True
        return any(p.ipip_mode not in ("", "Never") for p in self.pools.values())
