"""The dataplane driver's configuration: its own process settings and the Felix parameters it
reads from the stream.

Process settings (env ``CALICO_DATAPLANE_*`` > config file > defaults, via the runtime's
``load_config``):

| setting | meaning | default |
|---|---|---|
| ``node_name`` | this node (the Sync stream is for it) | hostname |
| ``calc_graph`` | calc_graph gRPC target | the lab socket |
| ``flavor`` | ``iptables`` or ``nftables`` | ``iptables`` |
| ``iptables_backend`` | ``auto`` (Felix's detection), ``legacy`` or ``nft`` | ``auto`` |
| ``iptables_refresh_interval`` | seconds between read-backs of iptables/nftables | 90 |
| ``ipsets_refresh_interval`` | seconds between read-backs of IP sets | 90 |
| ``routes_refresh_interval`` | seconds between read-backs of routes, neighbours, devices | 90 |
| ``retry_min`` / ``retry_max`` | backoff after a failed write, seconds | 0.1 / 30 |
| ``report_interval`` | seconds between ProcessStatusUpdate heartbeats | 10 |
| ``mtu_file`` | where the pod MTU is written for the CNI plugin | ``/var/lib/calico/mtu`` |
| ``endpoint_status_dir`` | a status file per programmed local endpoint (1) | none (off) |
| ``listen`` | gRPC health (and reflection) addresses; SERVING once in sync | none (off) |
| ``metrics_port`` | Prometheus ``/metrics`` on 127.0.0.1 (0/empty: off) | none |
| ``log_level`` | DEBUG/INFO/WARNING/ERROR | INFO |

(1) Calico's ``EndpointStatusPathPrefix``; the CNI plugin's ``policy_setup_timeout_seconds``
waits for its endpoint's file (``libcalico.endpoint_status``).

Felix parameters come in ``ConfigUpdate`` messages (names as Felix spells them, values as
strings) and are parsed by ``FelixParams.from_config``; the policy compiler reads the ones about
rules itself.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

ENV_PREFIX = "CALICO_DATAPLANE_"
LAB_CALC_GRAPH = "unix:///run/calico-lab/sock/calc_graph.sock"
DEFAULT_MTU_FILE = Path("/var/lib/calico/mtu")
DEFAULT_MTU_IFACE_PATTERN = r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)"


@dataclass(frozen=True)
class DataplaneConfig:
    node_name: str = field(default_factory=socket.gethostname)
    calc_graph: str = LAB_CALC_GRAPH
    flavor: Literal["iptables", "nftables"] = "iptables"
    iptables_backend: Literal["auto", "legacy", "nft"] = "auto"
    iptables_refresh_interval: float = 90.0
    ipsets_refresh_interval: float = 90.0
    routes_refresh_interval: float = 90.0
    retry_min: float = 0.1
    retry_max: float = 30.0
    report_interval: float = 10.0
    mtu_file: Path = DEFAULT_MTU_FILE
    ipv6_support: bool = True
    metrics_port: int | None = None
    trace_file: Path | None = None
    endpoint_status_dir: Path | None = None
    listen: list[str] = field(default_factory=list)
    otlp_endpoint: str | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for name in ("iptables_refresh_interval", "ipsets_refresh_interval",
                     "routes_refresh_interval", "retry_min", "retry_max", "report_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


def _bool(v: str) -> bool:
    return v.strip().lower() in ("true", "1", "yes", "y", "t", "on", "enabled")


@dataclass(frozen=True)
class FelixParams:
    """The Felix parameters the driver itself acts on (defaults are Felix's)."""

    interface_prefixes: tuple[str, ...] = ("cali",)
    vxlan_vni: int = 4096
    vxlan_port: int = 4789
    vxlan_mtu: int = 0  # 0: host MTU - 50
    ipip_mtu: int = 0  # 0: host MTU - 20
    ipip_tunnel_addr: str = ""
    mtu_iface_pattern: str = DEFAULT_MTU_IFACE_PATTERN
    device_route_protocol: int = 3
    iptables_backend: str = ""  # "" = the process setting decides
    ipip_enabled: bool | None = None
    vxlan_enabled: bool | None = None
    raw: Mapping[str, str] = field(default_factory=dict, compare=False)

    def with_config(self, params: Mapping[str, str]) -> FelixParams:
        p = {k.lower(): v.strip() for k, v in params.items() if v.strip() != ""}
        ch: dict[str, object] = {}
        if "interfaceprefix" in p:
            ch["interface_prefixes"] = tuple(x.strip() for x in p["interfaceprefix"].split(",")
                                             if x.strip())
        for key, attr in (("vxlanvni", "vxlan_vni"), ("vxlanport", "vxlan_port"),
                          ("vxlanmtu", "vxlan_mtu"), ("ipinipmtu", "ipip_mtu"),
                          ("devicerouteprotocol", "device_route_protocol")):
            if key in p:
                ch[attr] = int(p[key])
        if "ipiniptunneladdr" in p:
            ch["ipip_tunnel_addr"] = p["ipiniptunneladdr"]
        if "mtuifacepattern" in p:
            re.compile(p["mtuifacepattern"])
            ch["mtu_iface_pattern"] = p["mtuifacepattern"]
        if "iptablesbackend" in p:
            ch["iptables_backend"] = p["iptablesbackend"].lower()
        if "ipinipenabled" in p:
            ch["ipip_enabled"] = _bool(p["ipinipenabled"])
        if "vxlanenabled" in p:
            ch["vxlan_enabled"] = _bool(p["vxlanenabled"])
        ch["raw"] = {**self.raw, **params}
        return replace(self, **ch)  # type: ignore[arg-type]
