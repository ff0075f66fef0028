"""Local workload endpoints: their host interfaces and their /32 (/128) routes.

For each ``WorkloadEndpointUpdate`` (only this node's endpoints arrive) the manager records the
interface and addresses, points a route per address at the interface (``<ip>/32 dev caliX scope
link``, protocol ``DeviceRouteProtocol``, the same shape the CNI plugin writes, so Felix-style
ownership takes over without a rewrite), and configures the interface once it exists: the
sysctls Calico sets (proxy ARP so the pod's 169.254.1.1 gateway is answered, forwarding,
``route_localnet``, zero proxy delay; IPv6 ``proxy_ndp``, forwarding, no RA) and a check that
the host side carries Calico's MAC ``ee:ee:ee:ee:ee:ee``, logged when it does not.

Addresses that go away (endpoint removed, or its IPs changed) are handed to the conntrack
manager, so flows of a reused IP cannot leak into its next owner.

Endpoint status for the FromDataplane stream: ``up`` when the interface exists and is up and the
last apply succeeded, ``down`` when it is missing or down, ``error`` when the apply failed.
Policy for the endpoint is the compiler's business; the dispatch chains drop traffic from an
interface whose endpoint is not programmed yet ("Unknown interface"), so a new pod is fail-closed.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from libcalico.api.felix import felixbackend_pb2 as fb

from .owners.netlink import norm_cidr
from .owners.routes import LinkCache, RouteOwner, RouteTarget

log = logging.getLogger(__name__)

CALICO_HOST_MAC = "ee:ee:ee:ee:ee:ee"
WepKey = tuple[str, str, str]


def wep_key(wid: fb.WorkloadEndpointID) -> WepKey:
    return (wid.orchestrator_id, wid.workload_id, wid.endpoint_id)


def wep_id(key: WepKey) -> fb.WorkloadEndpointID:
    return fb.WorkloadEndpointID(orchestrator_id=key[0], workload_id=key[1], endpoint_id=key[2])


class Sysctls(Protocol):
    def write(self, path: str, value: str) -> bool: ...


class ProcSysctls:
    """Writes ``/proc/sys`` files (per network namespace of the calling thread)."""

    def write(self, path: str, value: str) -> bool:
        try:
            with open(path) as f:
                if f.read().strip() == value:
                    return False
            with open(path, "w") as f:
                f.write(value)
            return True
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False  # the interface went away; the next event re-runs this
            raise


def interface_sysctls(ifname: str, v4: bool, v6: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    if v4:
        base = f"/proc/sys/net/ipv4/conf/{ifname}"
        out[f"{base}/route_localnet"] = "1"
        out[f"/proc/sys/net/ipv4/neigh/{ifname}/proxy_delay"] = "0"
        out[f"{base}/proxy_arp"] = "1"
        out[f"{base}/forwarding"] = "1"
    if v6:
        base6 = f"/proc/sys/net/ipv6/conf/{ifname}"
        out[f"{base6}/accept_ra"] = "0"
        out[f"{base6}/proxy_ndp"] = "1"
        out[f"{base6}/forwarding"] = "1"
    return out


@dataclass
class LocalEndpoint:
    key: WepKey
    ifname: str
    nets: tuple[str, ...]  # normalised /32 and /128
    active: bool
    endpoint: fb.WorkloadEndpoint


class EndpointManager:
    def __init__(self, routes: RouteOwner, links: LinkCache, sysctls: Sysctls, *,
                 on_ips_removed: Callable[[list[str]], None] | None = None,
                 device_route_protocol: int = 3) -> None:
        self._routes = routes
        self._links = links
        self._sysctls = sysctls
        self._on_ips_removed = on_ips_removed or (lambda ips: None)
        self.device_route_protocol = device_route_protocol
        self.endpoints: dict[WepKey, LocalEndpoint] = {}
        self._by_iface: dict[str, WepKey] = {}
        self._configured: dict[str, int] = {}  # ifname → index we configured
        self._to_configure: set[str] = set()
        self._status: dict[WepKey, str] = {}
        self._unconfirmed: set[WepKey] = set()
        self.removed: list[WepKey] = []

    # -- stream ----------------------------------------------------------------------------

    def on_update(self, u: fb.WorkloadEndpointUpdate) -> None:
        key = wep_key(u.id)
        ep = u.endpoint
        nets = tuple(sorted({norm_cidr(n) for n in (*ep.ipv4_nets, *ep.ipv6_nets)}))
        new = LocalEndpoint(key, ep.name, nets, ep.state in ("active", ""), ep)
        old = self.endpoints.get(key)
        self.endpoints[key] = new
        if old is not None:
            if old.ifname != new.ifname:
                self._by_iface.pop(old.ifname, None)
            gone = [n for n in old.nets if n not in nets or not new.active]
            self._drop_routes(gone if old.ifname == new.ifname else list(old.nets))
        self._by_iface[new.ifname] = key
        if new.active:
            for n in nets:
                self._routes.set_route(n, RouteTarget.dev(new.ifname, self.device_route_protocol))
        if old is None or old.ifname != new.ifname:
            self._to_configure.add(new.ifname)

    def on_remove(self, r: fb.WorkloadEndpointRemove) -> None:
        key = wep_key(r.id)
        old = self.endpoints.pop(key, None)
        if old is None:
            return
        if self._by_iface.get(old.ifname) == key:
            del self._by_iface[old.ifname]
        self._configured.pop(old.ifname, None)
        self._drop_routes(list(old.nets))
        self.removed.append(key)

    def _drop_routes(self, nets: list[str]) -> None:
        if not nets:
            return
        for n in nets:
            self._routes.remove_route(n)
        self._on_ips_removed([n.split("/", 1)[0] for n in nets])

    def reset(self) -> None:
        """A new stream generation: forget endpoints (their routes stay until the sweep).

        The far end of the stream may be a new calc_graph that knows no status: every endpoint
        of the new snapshot is reported again, and one we had reported that is not in it is
        reported removed (it went while the stream was down).
        """
        self.endpoints.clear()
        self._by_iface.clear()
        self._to_configure.clear()
        self._unconfirmed.update(self._status)
        self._status.clear()

    def iface_event(self, name: str, index: int, deleted: bool) -> bool:
        """A link changed; returns whether it is one of ours (so the driver should apply)."""
        if name not in self._by_iface:
            return False
        if deleted:
            self._configured.pop(name, None)
        elif self._configured.get(name) != index:
            self._to_configure.add(name)
        self._routes.iface_appeared(name)
        return True

    def reconfigure_all(self) -> None:
        """Link events were lost: check every endpoint's interface again."""
        self._configured.clear()
        self._to_configure.update(ep.ifname for ep in self.endpoints.values())
        for ep in self.endpoints.values():
            self._routes.iface_appeared(ep.ifname)

    # -- apply -----------------------------------------------------------------------------

    def configure_interfaces(self) -> int:
        """Sysctls for interfaces that appeared (uses the link cache; call after a refresh)."""
        done = 0
        for name in sorted(self._to_configure):
            key = self._by_iface.get(name)
            link = self._links.by_name.get(name)
            if key is None:
                self._to_configure.discard(name)
                continue
            if link is None:
                continue  # not created yet; the link watcher brings it back here
            ep = self.endpoints[key]
            v4 = any(":" not in n for n in ep.nets) or not ep.nets
            v6 = any(":" in n for n in ep.nets)
            for path, value in interface_sysctls(name, v4, v6).items():
                self._sysctls.write(path, value)
            if link.mac and link.mac.lower() != CALICO_HOST_MAC:
                log.warning("workload interface %s has MAC %s, not %s", name, link.mac,
                            CALICO_HOST_MAC)
            self._configured[name] = link.index
            self._to_configure.discard(name)
            done += 1
        return done

    @property
    def unconfigured(self) -> set[str]:
        return set(self._to_configure)

    def status_changes(self, apply_ok: bool) -> tuple[list[tuple[WepKey, str, LocalEndpoint]],
                                                       list[WepKey]]:
        """(endpoint status updates, removed endpoints) since the last call."""
        updates = []
        pending = self._routes.pending_ifaces
        for key, ep in self.endpoints.items():
            link = self._links.by_name.get(ep.ifname)
            if not apply_ok:
                status = "error"
            elif link is None or not (link.up and link.oper_up) or not ep.active \
                    or ep.ifname in pending:
                status = "down"
            else:
                status = "up"
            if self._status.get(key) != status:
                self._status[key] = status
                updates.append((key, status, ep))
        removed = [k for k in self.removed if k not in self.endpoints]
        removed += [k for k in self._unconfirmed if k not in self.endpoints and k not in removed]
        self._unconfirmed.clear()
        for k in removed:
            self._status.pop(k, None)
        self.removed = []
        return updates, removed
