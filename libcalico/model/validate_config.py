"""Validation of the configuration kinds: FelixConfiguration, ClusterInformation and
KubeControllersConfiguration.

FelixConfiguration has about two hundred optional fields. ``FELIX_FIELDS`` maps each JSON name
to a check of its value type (and its enum or pattern where Calico defines one), so an unknown
or misspelt parameter is reported instead of being ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from libcalico.model.checks import (
    Ctx,
    as_bool,
    as_int,
    as_list,
    as_map,
    as_str,
    as_str_list,
    as_str_map,
    check_duration,
    check_fields,
    check_selector,
    enum,
    join_path,
    parse_cidr,
    parse_ip,
    parse_port,
    show,
)

Check = Callable[[Ctx, str, Any], Any]

LOG_LEVELS = ("Trace", "Debug", "Info", "Warning", "Error", "Fatal")
ENABLED_DISABLED = ("Enabled", "Disabled")


def _bool(ctx: Ctx, path: str, v: Any) -> Any:
    return as_bool(ctx, path, v)


def _int(ctx: Ctx, path: str, v: Any) -> Any:
    return as_int(ctx, path, v)


def _uint32(ctx: Ctx, path: str, v: Any) -> Any:
    return as_int(ctx, path, v, 0, 0xFFFFFFFF)


def _port(ctx: Ctx, path: str, v: Any) -> Any:
    return as_int(ctx, path, v, 0, 65535)


def _str(ctx: Ctx, path: str, v: Any) -> Any:
    return as_str(ctx, path, v)


def _one_of(*values: str, fold: bool = False) -> Check:
    def check(ctx: Ctx, path: str, v: Any) -> Any:
        return enum(ctx, path, v, values, fold=fold)

    return check


def _pattern(regex: str, what: str) -> Check:
    rx = re.compile(regex)

    def check(ctx: Ctx, path: str, v: Any) -> Any:
        s = as_str(ctx, path, v)
        if not rx.match(s):
            ctx.fail(path, f"{show(s)} is not {what}")
        return s

    return check


def _ipv4(ctx: Ctx, path: str, v: Any) -> Any:
    parse_ip(ctx, path, v, version=4)
    return v


def _ipv6(ctx: Ctx, path: str, v: Any) -> Any:
    parse_ip(ctx, path, v, version=6)
    return v


def _str_list(ctx: Ctx, path: str, v: Any) -> Any:
    return as_str_list(ctx, path, v)


def _cidr_list(ctx: Ctx, path: str, v: Any) -> Any:
    for i, c in enumerate(as_str_list(ctx, path, v)):
        parse_cidr(ctx, join_path(path, i), c, allow_ip=True)
    return v


def _ipv4_cidr_list(ctx: Ctx, path: str, v: Any) -> Any:
    for i, c in enumerate(as_str_list(ctx, path, v)):
        parse_cidr(ctx, join_path(path, i), c, allow_ip=True, version=4)
    return v


def _str_map(ctx: Ctx, path: str, v: Any) -> Any:
    return as_str_map(ctx, path, v)


def _proto_ports(ctx: Ctx, path: str, v: Any) -> Any:
    for i, item in enumerate(as_list(ctx, path, v)):
        ip = join_path(path, i)
        pp = as_map(ctx, ip, item)
        check_fields(ctx, ip, pp, ("protocol", "port", "net"))
        if "protocol" in pp:
            enum(ctx, join_path(ip, "protocol"), pp["protocol"], ("TCP", "UDP", "SCTP"))
        as_int(ctx, join_path(ip, "port"), pp.get("port"), 0, 65535)
        if pp.get("net"):
            parse_cidr(ctx, join_path(ip, "net"), pp["net"], allow_ip=True)
    return v


def _node_port_ranges(ctx: Ctx, path: str, v: Any) -> Any:
    ranges = as_list(ctx, path, v)
    if len(ranges) > 7:
        ctx.fail(path, f"lists {len(ranges)} ranges; at most 7 are allowed")
    out = []
    for i, r in enumerate(ranges):
        p = parse_port(ctx, join_path(path, i), r)
        if isinstance(p, str) and ":" not in p:
            ctx.fail(join_path(path, i), f"{show(p)}: node port ranges cannot be named ports")
        out.append(p)
    return out


def _port_or_range(ctx: Ctx, path: str, v: Any) -> Any:
    p = parse_port(ctx, path, v)
    if isinstance(p, str) and ":" not in p:
        ctx.fail(path, f"{show(p)} is not a port or 'min:max' range")
    return p


def _route_table_range(ctx: Ctx, path: str, v: Any) -> Any:
    r = as_map(ctx, path, v)
    check_fields(ctx, path, r, ("min", "max"))
    lo = as_int(ctx, join_path(path, "min"), r.get("min"))
    hi = as_int(ctx, join_path(path, "max"), r.get("max"))
    if not (1 <= lo <= hi <= 250):
        ctx.fail(path, f"{lo}-{hi} must be a range of route table indices within 1..250")
    return v


def _route_table_ranges(ctx: Ctx, path: str, v: Any) -> Any:
    for i, item in enumerate(as_list(ctx, path, v)):
        ip = join_path(path, i)
        r = as_map(ctx, ip, item)
        check_fields(ctx, ip, r, ("min", "max"))
        lo = as_int(ctx, join_path(ip, "min"), r.get("min"))
        hi = as_int(ctx, join_path(ip, "max"), r.get("max"))
        if lo < 1 or lo > hi or hi > 0xFFFFFFFF:
            ctx.fail(ip, f"{lo}-{hi} must satisfy 1 <= min <= max <= 4294967295")
    return v


def _health_overrides(ctx: Ctx, path: str, v: Any) -> Any:
    for i, item in enumerate(as_list(ctx, path, v)):
        ip = join_path(path, i)
        o = as_map(ctx, ip, item)
        check_fields(ctx, ip, o, ("name", "timeout"))
        name = as_str(ctx, join_path(ip, "name"), o.get("name"))
        if not re.match(r"^[a-zA-Z0-9_ -]+$", name):
            ctx.fail(join_path(ip, "name"), f"{show(name)} must match [a-zA-Z0-9_ -]+")
        check_duration(ctx, join_path(ip, "timeout"), o.get("timeout"))
    return v


def _conntrack_timeouts(ctx: Ctx, path: str, v: Any) -> Any:
    t = as_map(ctx, path, v)
    check_fields(
        ctx, path, t,
        ("creationGracePeriod", "tcpSynSent", "tcpEstablished", "tcpFinsSeen", "tcpResetSeen",
         "udpTimeout", "genericTimeout", "icmpTimeout"),
    )
    for k, val in t.items():
        if val != "Auto":
            check_duration(ctx, join_path(path, k), val)
    return v


def _selector(ctx: Ctx, path: str, v: Any) -> Any:
    return check_selector(ctx, path, v)


_LOG = _one_of(*LOG_LEVELS, fold=True)
_ON_OFF = _one_of(*ENABLED_DISABLED)

FELIX_FIELDS: dict[str, Check] = {
    "allowIPIPPacketsFromWorkloads": _bool,
    "allowVXLANPacketsFromWorkloads": _bool,
    "awsSrcDstCheck": _one_of("DoNothing", "Enable", "Disable"),
    "bpfAttachType": _one_of("TC", "TCX"),
    "bpfCTLBLogFilter": _str,
    "bpfConnectTimeLoadBalancing": _one_of("TCP", "Enabled", "Disabled"),
    "bpfConnectTimeLoadBalancingEnabled": _bool,
    "bpfConntrackLogLevel": _one_of("Off", "Debug"),
    "bpfConntrackMode": _one_of("Auto", "Userspace", "BPFProgram"),
    "bpfConntrackTimeouts": _conntrack_timeouts,
    "bpfDSROptoutCIDRs": _cidr_list,
    "bpfDataIfacePattern": _str,
    "bpfDisableGROForIfaces": _str,
    "bpfDisableUnprivileged": _bool,
    "bpfEnabled": _bool,
    "bpfEnforceRPF": _one_of("Disabled", "Strict", "Loose", fold=True),
    "bpfExcludeCIDRsFromNAT": _cidr_list,
    "bpfExportBufferSizeMB": _int,
    "bpfExtToServiceConnmark": _uint32,
    "bpfExternalServiceMode": _one_of("Tunnel", "DSR", fold=True),
    "bpfForceTrackPacketsFromIfaces": _str_list,
    "bpfHostConntrackBypass": _bool,
    "bpfHostNetworkedNATWithoutCTLB": _ON_OFF,
    "bpfIPFragTimeout": check_duration,
    "bpfIPFragmentReassemblyEnabled": _bool,
    "bpfJITHardening": _one_of("Auto", "Strict"),
    "bpfKubeProxyHealthzPort": _port,
    "bpfKubeProxyIptablesCleanupEnabled": _bool,
    "bpfKubeProxyMinSyncPeriod": check_duration,
    "bpfL3IfacePattern": _str,
    "bpfLogFilters": _str_map,
    "bpfLogLevel": _one_of("Off", "Info", "Debug", fold=True),
    "bpfMaglevMaxEndpointsPerService": _int,
    "bpfMaglevMaxServices": _int,
    "bpfMapSizeConntrack": _int,
    "bpfMapSizeConntrackCleanupQueue": _int,
    "bpfMapSizeConntrackScaling": _one_of("Disabled", "DoubleIfFull", fold=True),
    "bpfMapSizeIPSets": _int,
    "bpfMapSizeIfState": _int,
    "bpfMapSizeNATAffinity": _int,
    "bpfMapSizeNATBackend": _int,
    "bpfMapSizeNATFrontend": _int,
    "bpfMapSizePerCpuConntrack": _int,
    "bpfMapSizeRoute": _int,
    "bpfOverlayHostSourceIP": _one_of("TunnelAddress", "HostAddress"),
    "bpfPSNATPorts": _port_or_range,
    "bpfPolicyDebugEnabled": _bool,
    "bpfProfiling": _ON_OFF,
    "bpfRedirectToPeer": _ON_OFF,
    "cgroupV2Path": _str,
    "chainInsertMode": _one_of("Insert", "Append", fold=True),
    "dataplaneDriver": _str,
    "dataplaneWatchdogTimeout": check_duration,
    "debugDisableLogDropping": _bool,
    "debugHost": _str,
    "debugMemoryProfilePath": _str,
    "debugPort": _port,
    "debugSimulateCalcGraphHangAfter": check_duration,
    "debugSimulateDataplaneApplyDelay": check_duration,
    "debugSimulateDataplaneHangAfter": check_duration,
    "defaultEndpointToHostAction": _one_of("Drop", "Accept", "Return", fold=True),
    "deviceRouteProtocol": _int,
    "deviceRouteSourceAddress": _ipv4,
    "deviceRouteSourceAddressIPv6": _ipv6,
    "disableConntrackInvalidCheck": _bool,
    "endpointReportingDelay": check_duration,
    "endpointReportingEnabled": _bool,
    "endpointStatusPathPrefix": _str,
    "externalNodesList": _ipv4_cidr_list,
    "failsafeInboundHostPorts": _proto_ports,
    "failsafeOutboundHostPorts": _proto_ports,
    "featureDetectOverride": _pattern(
        r"^([a-zA-Z0-9-_]+=(true|false|),)*([a-zA-Z0-9-_]+=(true|false|))?$",
        "a comma-separated list of Feature=true|false",
    ),
    "featureGates": _pattern(
        r"^([a-zA-Z0-9-_]+=([^=]+),)*([a-zA-Z0-9-_]+=([^=]+))?$",
        "a comma-separated list of Feature=value",
    ),
    "floatingIPs": _ON_OFF,
    "flowLogsCollectorDebugTrace": _bool,
    "flowLogsFlushInterval": check_duration,
    "flowLogsGoldmaneServer": _str,
    "flowLogsLocalReporter": _ON_OFF,
    "flowLogsPolicyEvaluationMode": _one_of("None", "Continuous"),
    "genericXDPEnabled": _bool,
    "goGCThreshold": _int,
    "goMaxProcs": _int,
    "goMemoryLimitMB": _int,
    "healthEnabled": _bool,
    "healthHost": _str,
    "healthPort": _port,
    "healthTimeoutOverrides": _health_overrides,
    "interfaceExclude": _str,
    "interfacePrefix": _str,
    "interfaceRefreshInterval": check_duration,
    "ipForwarding": _ON_OFF,
    "ipipEnabled": _bool,
    "ipipMTU": _int,
    "ipsetsRefreshInterval": check_duration,
    "iptablesBackend": _one_of("Legacy", "NFT", "Auto", fold=True),
    "iptablesFilterAllowAction": _one_of("Accept", "Return", fold=True),
    "iptablesFilterDenyAction": _one_of("Drop", "Reject", fold=True),
    "iptablesLockProbeInterval": check_duration,
    "iptablesMangleAllowAction": _one_of("Accept", "Return", fold=True),
    "iptablesMarkMask": _uint32,
    "iptablesNATOutgoingInterfaceFilter": _str,
    "iptablesPostWriteCheckInterval": check_duration,
    "iptablesRefreshInterval": check_duration,
    "ipv4ElevatedRoutePriority": _int,
    "ipv4NormalRoutePriority": _int,
    "ipv6ElevatedRoutePriority": _int,
    "ipv6NormalRoutePriority": _int,
    "ipv6Support": _bool,
    "istioAmbientMode": _ON_OFF,
    "istioDSCPMark": _int,
    "kubeNodePortRanges": _node_port_ranges,
    "liveMigrationRouteConvergenceTime": check_duration,
    "localSubnetL2Reachability": _one_of("Disabled", "PodsAndLoadBalancers"),
    "localSubnetL2ReachabilityRefreshInterval": check_duration,
    "logActionRateLimit": _pattern(
        r"^[1-9]\d{0,3}/(?:second|minute|hour|day)$", "a rate such as '10/second'"
    ),
    "logActionRateLimitBurst": lambda c, p, v: as_int(c, p, v, 0, 9999),
    "logDebugFilenameRegex": _str,
    "logFilePath": _str,
    "logPrefix": _pattern(r"^([a-zA-Z0-9%: /_-])*$", "a log prefix of [a-zA-Z0-9%: /_-]"),
    "logSeverityFile": _LOG,
    "logSeverityScreen": _LOG,
    "logSeveritySys": _LOG,
    "maxIpsetSize": _int,
    "metadataAddr": _str,
    "metadataPort": _port,
    "mtuIfacePattern": _str,
    "natOutgoingAddress": _ipv4,
    "natOutgoingExclusions": _one_of("IPPoolsOnly", "IPPoolsAndHostIPs"),
    "natPortRange": _port_or_range,
    "netlinkTimeout": check_duration,
    "nftablesFilterAllowAction": _one_of("Accept", "Return", fold=True),
    "nftablesFilterDenyAction": _one_of("Drop", "Reject", fold=True),
    "nftablesMangleAllowAction": _one_of("Accept", "Return", fold=True),
    "nftablesMarkMask": _uint32,
    "nftablesMode": _one_of("Disabled", "Enabled", "Auto"),
    "nftablesRefreshInterval": check_duration,
    "nodeSelector": _selector,
    "openstackRegion": _pattern(
        r"^([a-z0-9]([-a-z0-9]{0,44}[a-z0-9])?)?$", "a DNS-1123 label of at most 46 characters"
    ),
    "policySyncPathPrefix": _str,
    "programClusterRoutes": _ON_OFF,
    "prometheusGoMetricsEnabled": _bool,
    "prometheusMetricsCAFile": _str,
    "prometheusMetricsCertFile": _str,
    "prometheusMetricsClientAuth": _str,
    "prometheusMetricsEnabled": _bool,
    "prometheusMetricsHost": _str,
    "prometheusMetricsKeyFile": _str,
    "prometheusMetricsPort": _port,
    "prometheusProcessMetricsEnabled": _bool,
    "prometheusWireGuardMetricsEnabled": _bool,
    "removeExternalRoutes": _bool,
    "reportingInterval": check_duration,
    "reportingTTL": check_duration,
    "requireMTUFile": _bool,
    "routeRefreshInterval": check_duration,
    "routeSource": _one_of("WorkloadIPs", "CalicoIPAM", fold=True),
    "routeSyncDisabled": _bool,
    "routeTableRange": _route_table_range,
    "routeTableRanges": _route_table_ranges,
    "serviceLoopPrevention": _one_of("Drop", "Reject", "Disabled", fold=True),
    "sidecarAccelerationEnabled": _bool,
    "usageReportingEnabled": _bool,
    "usageReportingInitialDelay": check_duration,
    "usageReportingInterval": check_duration,
    "useInternalDataplaneDriver": _bool,
    "vxlanEnabled": _bool,
    "vxlanMTU": _int,
    "vxlanMTUV6": _int,
    "vxlanPort": _port,
    "vxlanVNI": _uint32,
    "windowsManageFirewallRules": _ON_OFF,
    "wireguardEnabled": _bool,
    "wireguardEnabledV6": _bool,
    "wireguardHostEncryptionEnabled": _bool,
    "wireguardInterfaceName": _str,
    "wireguardInterfaceNameV6": _str,
    "wireguardKeepAlive": check_duration,
    "wireguardListeningPort": _port,
    "wireguardListeningPortV6": _port,
    "wireguardMTU": _int,
    "wireguardMTUV6": _int,
    "wireguardRoutingRulePriority": _int,
    "wireguardThreadingEnabled": _bool,
    "workloadSourceSpoofing": _one_of("Disabled", "Any", fold=True),
    "xdpEnabled": _bool,
    "xdpRefreshInterval": check_duration,
}


def validate_felix_configuration(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, FELIX_FIELDS)
    for key, value in list(spec.items()):
        result = FELIX_FIELDS[key](ctx, join_path("spec", key), value)
        if key in ("kubeNodePortRanges", "natPortRange", "bpfPSNATPorts"):
            spec[key] = result
    if "routeTableRange" in spec and "routeTableRanges" in spec:
        ctx.fail("spec.routeTableRange", "cannot be set together with routeTableRanges")
    name = res["metadata"]["name"]
    if "nodeSelector" in spec and (name == "default" or name.startswith("node.")):
        ctx.fail(
            "spec.nodeSelector",
            f"only a selector-scoped FelixConfiguration may set nodeSelector, not {show(name)}",
        )


CLUSTER_INFO_FIELDS = ("clusterGUID", "clusterType", "calicoVersion", "datastoreReady", "variant")


def validate_cluster_information(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, CLUSTER_INFO_FIELDS)
    for key, value in spec.items():
        if key == "datastoreReady":
            as_bool(ctx, "spec.datastoreReady", value)
        else:
            as_str(ctx, join_path("spec", key), value)


KCC_FIELDS = (
    "logSeverityScreen", "healthChecks", "etcdV3CompactionPeriod", "prometheusMetricsPort",
    "debugProfilePort", "controllers",
)
_CONTROLLERS: dict[str, tuple[str, ...]] = {
    "node": ("reconcilerPeriod", "syncLabels", "hostEndpoint", "leakGracePeriod"),
    "policy": ("reconcilerPeriod",),
    "workloadEndpoint": ("reconcilerPeriod",),
    "serviceAccount": ("reconcilerPeriod",),
    "namespace": ("reconcilerPeriod",),
    "loadBalancer": ("assignIPs",),
    "policyMigration": ("enabled",),
}


def validate_kube_controllers_configuration(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, KCC_FIELDS)
    if "logSeverityScreen" in spec:
        enum(ctx, "spec.logSeverityScreen", spec["logSeverityScreen"],
             ("None", "Debug", "Info", "Warning", "Error", "Fatal", "Panic"))
    if "healthChecks" in spec:
        enum(ctx, "spec.healthChecks", spec["healthChecks"], ENABLED_DISABLED)
    if "etcdV3CompactionPeriod" in spec:
        check_duration(ctx, "spec.etcdV3CompactionPeriod", spec["etcdV3CompactionPeriod"])
    for key in ("prometheusMetricsPort", "debugProfilePort"):
        if key in spec:
            as_int(ctx, join_path("spec", key), spec[key], 0, 65535)
    controllers = as_map(ctx, "spec.controllers", spec.setdefault("controllers", {}))
    check_fields(ctx, "spec.controllers", controllers, _CONTROLLERS)
    for name, raw in controllers.items():
        path = join_path("spec.controllers", name)
        if raw is None:
            continue
        ctl = as_map(ctx, path, raw)
        check_fields(ctx, path, ctl, _CONTROLLERS[name])
        for key, value in ctl.items():
            kpath = join_path(path, key)
            if key in ("reconcilerPeriod", "leakGracePeriod"):
                check_duration(ctx, kpath, value)
            elif key in ("syncLabels", "enabled"):
                enum(ctx, kpath, value, ENABLED_DISABLED)
            elif key == "assignIPs":
                enum(ctx, kpath, value, ("AllServices", "RequestedServicesOnly"))
            elif key == "hostEndpoint":
                hep = as_map(ctx, kpath, value)
                check_fields(ctx, kpath, hep, ("autoCreate", "createDefaultHostEndpoint",
                                               "templates"))
                if "autoCreate" in hep:
                    enum(ctx, join_path(kpath, "autoCreate"), hep["autoCreate"], ENABLED_DISABLED)
