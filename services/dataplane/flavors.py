"""Building a driver: the one function that wires owners, managers and the flavor.

::

    build_driver(settings, runner, nl, sink)
      ├─ LinkCache ─┬─ RouteOwner ── RouteClass x3 (blocks, VXLAN, IPIP) + EndpointManager
      │             ├─ DeviceOwner vxlan.calico, DeviceOwner tunl0 (never deleted)
      │             └─ NeighbourOwner / FdbOwner on vxlan.calico
      ├─ RuleOwners: IptablesTable per (IP version, table) on the detected backend,
      │              IPSetOwner, NftablesOwner  ── PolicyManager(flavor, compiler)
      ├─ MTUManager(mtu file), ConntrackManager, MasqManager
      └─ StatusReporter(sink)

The flavor (``iptables`` or ``nftables``) decides which rule owners the compiler feeds; the
other flavor's owners are built too, with nothing desired, so the first sweep after in-sync
cleans up after a previous run in the other mode.
"""

from __future__ import annotations

from pathlib import Path

from services.policy.config import CompilerConfig

from .blocks import BlockManager
from .commands import ExecRunner, Runner
from .config import FelixParams
from .conntrack import ConntrackManager
from .driver import Driver, DriverSettings
from .endpoints import EndpointManager, ProcSysctls, Sysctls
from .ipip import DEVICE as IPIP_DEVICE
from .ipip import IPIPManager
from .masq import MasqManager
from .mtu import MTUManager
from .owners.ipsets import IPSetOwner
from .owners.iptables import IptablesTable
from .owners.links import DeviceOwner
from .owners.netlink import Netlink, PyrouteNetlink
from .owners.nftables import NftablesOwner
from .owners.routes import FdbOwner, LinkCache, NeighbourOwner, RouteClass, RouteOwner
from .policy import FLAVORS, PolicyManager, RuleOwners
from .state import ClusterState
from .status import StatusReporter, StatusSink
from .vxlan import DEVICE as VXLAN_DEVICE
from .vxlan import VXLANManager


def build_driver(
    settings: DriverSettings,
    *,
    sink: StatusSink,
    runner: Runner | None = None,
    nl: Netlink | None = None,
    sysctls: Sysctls | None = None,
    iptables_backend: str = "nft",
    mtu_file: Path | None = None,
    ipv6: bool = True,
    report_interval: float = 10.0,
    interface_prefixes: tuple[str, ...] = ("cali",),
) -> Driver:
    """Wire a driver (see the module diagram). ``iptables_backend`` is already resolved."""
    if settings.flavor not in FLAVORS:
        raise ValueError(f"unknown dataplane flavor {settings.flavor!r}; expected {FLAVORS}")
    runner = runner or ExecRunner()
    nl = nl or PyrouteNetlink()
    links = LinkCache(nl)
    routes = RouteOwner(nl, links, iface_prefixes=interface_prefixes)
    conntrack = ConntrackManager(runner)
    endpoints = EndpointManager(routes, links, sysctls or ProcSysctls(),
                                on_ips_removed=conntrack.ips_removed)
    rule_owners = RuleOwners(
        make_table=lambda v, table: IptablesTable(table, runner, backend=iptables_backend,
                                                  ip_version=v),
        ipsets=IPSetOwner(runner),
        nft=NftablesOwner(runner, families=("ip", "ip6") if ipv6 else ("ip",)),
    )
    compiler_config = CompilerConfig(ipv6_support=ipv6, interface_prefixes=interface_prefixes)
    policy = PolicyManager(settings.flavor, rule_owners, compiler_config)
    state = ClusterState(node=settings.node, params=FelixParams())
    vxlan = VXLANManager(
        DeviceOwner(nl, links, VXLAN_DEVICE),
        NeighbourOwner(nl, links, VXLAN_DEVICE),
        FdbOwner(nl, links, VXLAN_DEVICE),
        RouteClass(routes),
    )
    ipip = IPIPManager(DeviceOwner(nl, links, IPIP_DEVICE, deletable=False), RouteClass(routes))
    return Driver(
        settings,
        nl=nl,
        links=links,
        state=state,
        policy=policy,
        endpoints=endpoints,
        routes=routes,
        blocks=BlockManager(RouteClass(routes)),
        vxlan=vxlan,
        ipip=ipip,
        mtu=MTUManager(mtu_file),
        conntrack=conntrack,
        masq=MasqManager(),
        reporter=StatusReporter(sink, interval=report_interval),
    )
