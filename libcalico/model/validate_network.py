"""Validation of networking kinds: IP pools and reservations, nodes, endpoints, network sets,
BGP peers and BGP configuration.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from libcalico.errors import ValidationError
from libcalico.model.checks import (
    PORT_PROTOCOLS,
    Ctx,
    as_bool,
    as_int,
    as_list,
    as_map,
    as_str,
    as_str_list,
    check_duration,
    check_fields,
    check_interface,
    check_mac,
    check_selector,
    drop_nulls,
    enum,
    join_path,
    one_of,
    parse_as_number,
    parse_cidr,
    parse_ip,
    parse_protocol,
    show,
)
from libcalico.model.defaults import (
    DEFAULT_NODE_SELECTOR,
    LABEL_NAMESPACE,
    LABEL_ORCHESTRATOR,
    default_ippool,
)
from libcalico.model.names import is_dns1123_subdomain, wep_name_for_spec

ENCAP_MODES = ("Never", "Always", "CrossSubnet")
ALLOWED_USES = ("Workload", "Tunnel", "LoadBalancer")
ASSIGNMENT_MODES = ("Automatic", "Manual")
IPV4_LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
IPV6_LINK_LOCAL = ipaddress.ip_network("fe80::/10")

IPPOOL_FIELDS = frozenset(
    {"cidr", "blockSize", "ipipMode", "vxlanMode", "natOutgoing", "disabled", "disableBGPExport",
     "nodeSelector", "namespaceSelector", "allowedUses", "assignmentMode"}
)
NODE_FIELDS = frozenset(
    {"bgp", "ipv4VXLANTunnelAddr", "vxlanTunnelMACAddr", "ipv6VXLANTunnelAddr",
     "vxlanTunnelMACAddrV6", "orchRefs", "wireguard", "addresses", "interfaces"}
)
NODE_BGP_FIELDS = frozenset(
    {"asNumber", "ipv4Address", "ipv6Address", "ipv4IPIPTunnelAddr", "routeReflectorClusterID"}
)
NODE_STATUS_FIELDS = frozenset({"wireguardPublicKey", "wireguardPublicKeyV6", "podCIDRs"})
WEP_FIELDS = frozenset(
    {"orchestrator", "workload", "node", "containerID", "pod", "endpoint", "serviceAccountName",
     "ipNetworks", "ipNATs", "ipv4Gateway", "ipv6Gateway", "profiles", "interfaceName", "mac",
     "ports", "allowSpoofedSourcePrefixes", "qosControls"}
)
QOS_FIELDS = frozenset(
    {"ingressBandwidth", "ingressBurst", "ingressPeakrate", "ingressMinburst", "egressBandwidth",
     "egressBurst", "egressPeakrate", "egressMinburst", "ingressPacketRate",
     "ingressPacketBurst", "egressPacketRate", "egressPacketBurst", "ingressMaxConnections",
     "egressMaxConnections", "dscp"}
)
HEP_FIELDS = frozenset({"node", "interfaceName", "expectedIPs", "profiles", "ports"})
BGPPEER_FIELDS = frozenset(
    {"node", "nodeSelector", "peerIP", "asNumber", "peerSelector", "localWorkloadSelector",
     "localASNumber", "keepOriginalNextHop", "nextHopMode", "password", "sourceAddress",
     "maxRestartTime", "keepaliveTime", "numAllowedLocalASNumbers", "ttlSecurity",
     "reachableBy", "filters", "reversePeering"}
)
BGPCONFIG_FIELDS = frozenset(
    {"logSeverityScreen", "nodeToNodeMeshEnabled", "asNumber", "serviceClusterIPs",
     "serviceExternalIPs", "serviceLoadBalancerIPs", "communities", "prefixAdvertisements",
     "listenPort", "nodeMeshPassword", "nodeMeshMaxRestartTime", "bindMode",
     "ignoredInterfaces", "localWorkloadPeeringIPV4", "localWorkloadPeeringIPV6",
     "programClusterRoutes", "serviceLoadBalancerAggregation"}
)
LOG_SEVERITIES = ("Trace", "Debug", "Info", "Warning", "Error", "Fatal")

_PEER_IPV4_PORT = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+):(\d+)$")
_PEER_IPV6_PORT = re.compile(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$")
_STANDARD_COMMUNITY = re.compile(r"^(\d+):(\d+)$")
_LARGE_COMMUNITY = re.compile(r"^(\d+):(\d+):(\d+)$")
_IGNORED_INTERFACE = re.compile(r"^[a-zA-Z0-9_.*-]{1,15}$")


def _name_ref(ctx: Ctx, path: str, value: Any) -> str:
    s = as_str(ctx, path, value)
    if not is_dns1123_subdomain(s):
        ctx.fail(path, f"{show(s)} is not a valid name (lowercase DNS-1123 subdomain)")
    return s


# --- IPPool / IPReservation -------------------------------------------------------------------


def validate_ippool(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, IPPOOL_FIELDS)
    if not spec.get("cidr"):
        ctx.fail("spec.cidr", "an IP pool needs a CIDR, e.g. 192.168.0.0/16")
    net = parse_cidr(ctx, "spec.cidr", spec["cidr"], strict=True)
    spec["cidr"] = str(net)  # canonical text, as Calico stores it
    default_ippool(spec, net.version)

    lo, hi = (20, 32) if net.version == 4 else (116, 128)
    block = spec["blockSize"]
    if isinstance(block, bool) or not isinstance(block, int):
        ctx.fail("spec.blockSize", f"must be an integer, got {show(block)}")
    if not lo <= block <= hi:
        ctx.fail(
            "spec.blockSize", f"{block} is out of range {lo}-{hi} for an IPv{net.version} pool"
        )
    for key in ("natOutgoing", "disabled", "disableBGPExport"):
        if key in spec:
            as_bool(ctx, join_path("spec", key), spec[key])
    if not spec.get("disabled") and net.prefixlen > block:
        ctx.fail(
            "spec.cidr",
            f"pool {net} (/{net.prefixlen}) is smaller than one /{block} block; the pool's"
            f" prefix length must be at most the blockSize {block}",
        )
    link_local = IPV4_LINK_LOCAL if net.version == 4 else IPV6_LINK_LOCAL
    if net.overlaps(link_local):  # type: ignore[arg-type]
        ctx.fail("spec.cidr", f"pool {net} overlaps the link-local range {link_local}")

    ipip = enum(ctx, "spec.ipipMode", spec["ipipMode"], ENCAP_MODES)
    vxlan = enum(ctx, "spec.vxlanMode", spec["vxlanMode"], ENCAP_MODES)
    if net.version == 6 and ipip != "Never":
        ctx.fail("spec.ipipMode", f"IPIP is not supported on an IPv6 pool (ipipMode {ipip})")
    if ipip != "Never" and vxlan != "Never":
        ctx.fail(
            "spec.vxlanMode",
            f"a pool cannot use both IPIP and VXLAN (ipipMode {ipip}, vxlanMode {vxlan});"
            " set one of them to Never",
        )
    for key in ("nodeSelector", "namespaceSelector"):
        if key in spec:
            check_selector(ctx, join_path("spec", key), spec[key])
    uses = as_list(ctx, "spec.allowedUses", spec["allowedUses"])
    for i, use in enumerate(uses):
        enum(ctx, f"spec.allowedUses[{i}]", use, ALLOWED_USES)
    if "LoadBalancer" in uses:
        other = [u for u in uses if u != "LoadBalancer"]
        if other:
            ctx.fail(
                "spec.allowedUses", f"LoadBalancer cannot be combined with {one_of(other)}"
            )
        if ipip != "Never" or vxlan != "Never":
            ctx.fail("spec.ipipMode", "a LoadBalancer pool cannot use IPIP or VXLAN")
        if spec["nodeSelector"] != DEFAULT_NODE_SELECTOR:
            ctx.fail("spec.nodeSelector", "a LoadBalancer pool's nodeSelector must be all()")
    enum(ctx, "spec.assignmentMode", spec["assignmentMode"], ASSIGNMENT_MODES)


def validate_ipreservation(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, ("reservedCIDRs",))
    if "reservedCIDRs" in spec:
        cidrs = as_str_list(ctx, "spec.reservedCIDRs", spec["reservedCIDRs"])
        for i, c in enumerate(cidrs):
            parse_cidr(ctx, f"spec.reservedCIDRs[{i}]", c, allow_ip=True)


# --- Node ---------------------------------------------------------------------------------------


def validate_node(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, NODE_FIELDS)
    if "bgp" in spec:
        bgp = drop_nulls(dict(as_map(ctx, "spec.bgp", spec["bgp"])))
        check_fields(ctx, "spec.bgp", bgp, NODE_BGP_FIELDS)
        if not bgp:
            ctx.fail("spec.bgp", "must not be empty when present")
        if "asNumber" in bgp:
            bgp["asNumber"] = parse_as_number(ctx, "spec.bgp.asNumber", bgp["asNumber"])
        if "ipv4Address" in bgp:
            parse_cidr(ctx, "spec.bgp.ipv4Address", bgp["ipv4Address"], version=4, allow_ip=True)
        if "ipv6Address" in bgp:
            parse_cidr(ctx, "spec.bgp.ipv6Address", bgp["ipv6Address"], version=6, allow_ip=True)
        for key in ("ipv4IPIPTunnelAddr", "routeReflectorClusterID"):
            if key in bgp:
                parse_ip(ctx, join_path("spec.bgp", key), bgp[key], version=4)
        spec["bgp"] = bgp
    if "ipv4VXLANTunnelAddr" in spec:
        parse_ip(ctx, "spec.ipv4VXLANTunnelAddr", spec["ipv4VXLANTunnelAddr"], version=4)
    if "ipv6VXLANTunnelAddr" in spec:
        parse_ip(ctx, "spec.ipv6VXLANTunnelAddr", spec["ipv6VXLANTunnelAddr"], version=6)
    for key in ("vxlanTunnelMACAddr", "vxlanTunnelMACAddrV6"):
        if key in spec:
            check_mac(ctx, join_path("spec", key), spec[key])
    if "orchRefs" in spec:
        for i, ref in enumerate(as_list(ctx, "spec.orchRefs", spec["orchRefs"])):
            path = f"spec.orchRefs[{i}]"
            ref = as_map(ctx, path, ref)
            check_fields(ctx, path, ref, ("nodeName", "orchestrator"))
            for k, v in ref.items():
                as_str(ctx, join_path(path, k), v)
    if "wireguard" in spec:
        wg = as_map(ctx, "spec.wireguard", spec["wireguard"])
        check_fields(ctx, "spec.wireguard", wg, ("interfaceIPv4Address", "interfaceIPv6Address"))
        if "interfaceIPv4Address" in wg:
            parse_ip(ctx, "spec.wireguard.interfaceIPv4Address", wg["interfaceIPv4Address"], 4)
        if "interfaceIPv6Address" in wg:
            parse_ip(ctx, "spec.wireguard.interfaceIPv6Address", wg["interfaceIPv6Address"], 6)
    if "addresses" in spec:
        for i, addr in enumerate(as_list(ctx, "spec.addresses", spec["addresses"])):
            path = f"spec.addresses[{i}]"
            addr = as_map(ctx, path, addr)
            check_fields(ctx, path, addr, ("address", "type"))
            parse_cidr(ctx, join_path(path, "address"), addr.get("address"), allow_ip=True)
            if "type" in addr:
                enum(ctx, join_path(path, "type"), addr["type"],
                     ("CalicoNodeIP", "InternalIP", "ExternalIP"))
    if "interfaces" in spec:
        for i, iface in enumerate(as_list(ctx, "spec.interfaces", spec["interfaces"])):
            path = f"spec.interfaces[{i}]"
            iface = as_map(ctx, path, iface)
            check_fields(ctx, path, iface, ("name", "addresses"))
            if "addresses" in iface:
                as_str_list(ctx, join_path(path, "addresses"), iface["addresses"])
    if "status" in res:
        status = as_map(ctx, "status", res["status"])
        check_fields(ctx, "status", status, NODE_STATUS_FIELDS)
        if "podCIDRs" in status:
            for i, c in enumerate(as_str_list(ctx, "status.podCIDRs", status["podCIDRs"])):
                parse_cidr(ctx, f"status.podCIDRs[{i}]", c, allow_ip=True)


# --- endpoints ----------------------------------------------------------------------------------


def _endpoint_protocol(ctx: Ctx, path: str, value: Any) -> int | str:
    proto = parse_protocol(ctx, path, value)
    if proto not in PORT_PROTOCOLS:
        ctx.fail(path, f"protocol {show(proto)} has no ports; use TCP, UDP or SCTP")
    return proto


def validate_workload_endpoint(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    meta = res["metadata"]
    check_fields(ctx, "spec", spec, WEP_FIELDS)
    for key in ("orchestrator", "workload", "node", "pod", "endpoint", "serviceAccountName"):
        if key in spec:
            _name_ref(ctx, join_path("spec", key), spec[key])
    if "containerID" in spec:
        cid = as_str(ctx, "spec.containerID", spec["containerID"])
        if not re.match(r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$", cid):
            ctx.fail("spec.containerID", f"{show(cid)} is not a valid container ID")
    try:
        expected = wep_name_for_spec(spec)
    except ValidationError as e:  # names the missing or badly dashed identifier
        ctx.fail(e.field or "spec", e.reason)
    if not meta.get("name"):
        meta["name"] = expected  # Calico names the endpoint on the caller's behalf
    elif meta["name"] != expected:
        ctx.fail(
            "metadata.name",
            f"{show(meta['name'])} does not match the endpoint's node, orchestrator, workload"
            f" and endpoint: expected {show(expected)}",
        )
    nets = []
    if "ipNetworks" in spec:
        for i, n in enumerate(as_str_list(ctx, "spec.ipNetworks", spec["ipNetworks"])):
            net = parse_cidr(ctx, f"spec.ipNetworks[{i}]", n, allow_ip=True, strict=True)
            if net.prefixlen != net.max_prefixlen:
                ctx.fail(
                    f"spec.ipNetworks[{i}]",
                    f"{show(n)} holds more than one address; use /32 (IPv4) or /128 (IPv6)",
                )
            nets.append(net)
    if "ipNATs" in spec:
        for i, nat in enumerate(as_list(ctx, "spec.ipNATs", spec["ipNATs"])):
            path = f"spec.ipNATs[{i}]"
            nat = as_map(ctx, path, nat)
            check_fields(ctx, path, nat, ("internalIP", "externalIP"))
            internal = parse_ip(ctx, join_path(path, "internalIP"), nat.get("internalIP"))
            external = parse_ip(ctx, join_path(path, "externalIP"), nat.get("externalIP"))
            if internal.version != external.version:
                ctx.fail(path, "internalIP and externalIP must be the same IP version")
            if not any(internal in n for n in nets):
                ctx.fail(
                    join_path(path, "internalIP"),
                    f"{internal} is not one of the endpoint's ipNetworks",
                )
    if "ipv4Gateway" in spec:
        parse_ip(ctx, "spec.ipv4Gateway", spec["ipv4Gateway"], version=4)
    if "ipv6Gateway" in spec:
        parse_ip(ctx, "spec.ipv6Gateway", spec["ipv6Gateway"], version=6)
    if "profiles" in spec:
        for i, p in enumerate(as_list(ctx, "spec.profiles", spec["profiles"])):
            _name_ref(ctx, f"spec.profiles[{i}]", p)
    check_interface(ctx, "spec.interfaceName", spec.get("interfaceName"))
    if "mac" in spec:
        check_mac(ctx, "spec.mac", spec["mac"])
    if "ports" in spec:
        for i, port in enumerate(as_list(ctx, "spec.ports", spec["ports"])):
            path = f"spec.ports[{i}]"
            port = as_map(ctx, path, port)
            check_fields(ctx, path, port, ("name", "protocol", "port", "hostPort", "hostIP"))
            port["protocol"] = _endpoint_protocol(
                ctx, join_path(path, "protocol"), port.get("protocol")
            )
            as_int(ctx, join_path(path, "port"), port.get("port"), 1, 65535)
            host_port = as_int(ctx, join_path(path, "hostPort"), port.get("hostPort", 0), 0, 65535)
            if port.get("name"):
                as_str(ctx, join_path(path, "name"), port["name"])
            elif not host_port:
                ctx.fail(join_path(path, "name"), "a port needs a name unless it has a hostPort")
            if port.get("hostIP"):
                parse_cidr(ctx, join_path(path, "hostIP"), port["hostIP"], allow_ip=True)
    if "allowSpoofedSourcePrefixes" in spec:
        prefixes = as_str_list(ctx, "spec.allowSpoofedSourcePrefixes",
                               spec["allowSpoofedSourcePrefixes"])
        for i, c in enumerate(prefixes):
            parse_cidr(ctx, f"spec.allowSpoofedSourcePrefixes[{i}]", c, allow_ip=True)
    if "qosControls" in spec:
        qos = as_map(ctx, "spec.qosControls", spec["qosControls"])
        check_fields(ctx, "spec.qosControls", qos, QOS_FIELDS)
        for k, v in qos.items():
            if k != "dscp":
                as_int(ctx, join_path("spec.qosControls", k), v, 0)
    # Calico keeps these two labels in step with the endpoint so policy can select on them.
    meta["labels"] = {
        **meta.get("labels", {}),
        LABEL_NAMESPACE: meta["namespace"],
        LABEL_ORCHESTRATOR: spec["orchestrator"],
    }


def validate_host_endpoint(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, HEP_FIELDS)
    if not spec.get("node"):
        ctx.fail("spec.node", "a host endpoint needs the node it belongs to")
    _name_ref(ctx, "spec.node", spec["node"])
    if "interfaceName" in spec:
        check_interface(ctx, "spec.interfaceName", spec["interfaceName"], wildcard=True)
    if "expectedIPs" in spec:
        for i, ip in enumerate(as_list(ctx, "spec.expectedIPs", spec["expectedIPs"])):
            parse_ip(ctx, f"spec.expectedIPs[{i}]", ip)
    if not spec.get("interfaceName") and not spec.get("expectedIPs"):
        ctx.fail("spec.interfaceName", "a host endpoint needs an interfaceName or expectedIPs")
    if "profiles" in spec:
        for i, p in enumerate(as_list(ctx, "spec.profiles", spec["profiles"])):
            _name_ref(ctx, f"spec.profiles[{i}]", p)
    if "ports" in spec:
        for i, port in enumerate(as_list(ctx, "spec.ports", spec["ports"])):
            path = f"spec.ports[{i}]"
            port = as_map(ctx, path, port)
            check_fields(ctx, path, port, ("name", "protocol", "port"))
            name = as_str(ctx, join_path(path, "name"), port.get("name"))
            if not name:
                ctx.fail(join_path(path, "name"), "a host endpoint port needs a name")
            port["protocol"] = _endpoint_protocol(
                ctx, join_path(path, "protocol"), port.get("protocol")
            )
            as_int(ctx, join_path(path, "port"), port.get("port"), 1, 65535)


def _validate_network_set(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, ("nets",))
    if "nets" in spec:
        for i, n in enumerate(as_str_list(ctx, "spec.nets", spec["nets"])):
            parse_cidr(ctx, f"spec.nets[{i}]", n, allow_ip=True)
    if LABEL_NAMESPACE in res["metadata"].get("labels", {}):
        ctx.fail(
            f"metadata.labels.{LABEL_NAMESPACE}",
            f"{LABEL_NAMESPACE} is reserved for Calico and cannot be set on a network set",
        )


validate_network_set = _validate_network_set
validate_global_network_set = _validate_network_set


# --- BGP ----------------------------------------------------------------------------------------


def _peer_ip(ctx: Ctx, path: str, value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``<ip>``, ``<ipv4>:<port>`` or ``[<ipv6>]:<port>``."""
    s = as_str(ctx, path, value)
    m4, m6 = _PEER_IPV4_PORT.match(s), _PEER_IPV6_PORT.match(s)
    text, port = s, None
    if m4:
        text, port = s.rsplit(":", 1)
    elif m6:
        text, port = m6.group(1), m6.group(2)
    if port is not None and not 1 <= int(port) <= 65535:
        ctx.fail(path, f"{show(s)}: port {port} is out of range 1-65535")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        ctx.fail(path, f"{show(s)} is not an IP address, <IPv4>:<port> or [<IPv6>]:<port>")


def validate_bgp_peer(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, BGPPEER_FIELDS)
    if spec.get("node") and spec.get("nodeSelector"):
        ctx.fail("spec.node", "set node or nodeSelector, not both")
    if "node" in spec:
        _name_ref(ctx, "spec.node", spec["node"])
    for key in ("nodeSelector", "peerSelector", "localWorkloadSelector"):
        if key in spec:
            check_selector(ctx, join_path("spec", key), spec[key])
    for key in ("asNumber", "localASNumber"):
        if key in spec:
            spec[key] = parse_as_number(ctx, join_path("spec", key), spec[key])
    peer_ip = spec.get("peerIP")
    peer_sel = spec.get("peerSelector")
    local_sel = spec.get("localWorkloadSelector")
    chosen = [k for k in ("peerIP", "peerSelector", "localWorkloadSelector") if spec.get(k)]
    if len(chosen) > 1:
        ctx.fail(join_path("spec", chosen[1]), f"set only one of {one_of(chosen)}")
    if not chosen:
        ctx.fail(
            "spec.peerIP",
            "a BGP peer needs peerIP (with asNumber), peerSelector or localWorkloadSelector",
        )
    ip = _peer_ip(ctx, "spec.peerIP", peer_ip) if peer_ip else None
    if peer_sel and "asNumber" in spec:
        ctx.fail("spec.asNumber", "must be empty when peerSelector is set (each selected"
                 " node's own AS number is used)")
    if (peer_ip or local_sel) and "asNumber" not in spec:
        ctx.fail("spec.asNumber", f"the peer's AS number is required with {chosen[0]}")
    if "reachableBy" in spec:
        via = parse_ip(ctx, "spec.reachableBy", spec["reachableBy"])
        if ip is None:
            ctx.fail("spec.reachableBy", "reachableBy needs peerIP to be set")
        if via.version != ip.version:
            ctx.fail("spec.reachableBy", f"{via} and peerIP {ip} are different IP versions")
    if "keepOriginalNextHop" in spec:
        as_bool(ctx, "spec.keepOriginalNextHop", spec["keepOriginalNextHop"])
    if spec.get("keepOriginalNextHop") and "nextHopMode" in spec:
        ctx.fail("spec.keepOriginalNextHop", "cannot be true when nextHopMode is set")
    if "nextHopMode" in spec:
        enum(ctx, "spec.nextHopMode", spec["nextHopMode"], ("Auto", "Self", "Keep"))
    if "sourceAddress" in spec:
        enum(ctx, "spec.sourceAddress", spec["sourceAddress"], ("UseNodeIP", "None"))
    if "reversePeering" in spec:
        enum(ctx, "spec.reversePeering", spec["reversePeering"], ("Auto", "Manual"))
    for key in ("maxRestartTime", "keepaliveTime"):
        if key in spec:
            check_duration(ctx, join_path("spec", key), spec[key])
    if "numAllowedLocalASNumbers" in spec:
        as_int(ctx, "spec.numAllowedLocalASNumbers", spec["numAllowedLocalASNumbers"], 0)
    if "ttlSecurity" in spec:
        as_int(ctx, "spec.ttlSecurity", spec["ttlSecurity"], 0, 255)
    if "filters" in spec:
        for i, f in enumerate(as_list(ctx, "spec.filters", spec["filters"])):
            _name_ref(ctx, f"spec.filters[{i}]", f)
    if "password" in spec:
        _password(ctx, "spec.password", spec["password"])


def _password(ctx: Ctx, path: str, value: Any) -> None:
    pw = as_map(ctx, path, value)
    check_fields(ctx, path, pw, ("secretKeyRef",))
    if "secretKeyRef" in pw:
        ref_path = join_path(path, "secretKeyRef")
        ref = as_map(ctx, ref_path, pw["secretKeyRef"])
        check_fields(ctx, ref_path, ref, ("name", "key", "optional"))
        if not ref.get("key"):
            ctx.fail(join_path(ref_path, "key"), "a secretKeyRef needs the key to read")


def _community_ok(value: str) -> bool:
    if _STANDARD_COMMUNITY.match(value):
        return all(int(p) <= 0xFFFF for p in value.split(":"))
    if _LARGE_COMMUNITY.match(value):
        return all(int(p) <= 0xFFFFFFFF for p in value.split(":"))
    return False


def validate_bgp_configuration(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, BGPCONFIG_FIELDS)
    if "logSeverityScreen" in spec:
        enum(ctx, "spec.logSeverityScreen", spec["logSeverityScreen"], LOG_SEVERITIES, fold=True)
    if "nodeToNodeMeshEnabled" in spec:
        as_bool(ctx, "spec.nodeToNodeMeshEnabled", spec["nodeToNodeMeshEnabled"])
    if "asNumber" in spec:
        spec["asNumber"] = parse_as_number(ctx, "spec.asNumber", spec["asNumber"])
    for key in ("serviceClusterIPs", "serviceExternalIPs", "serviceLoadBalancerIPs"):
        if key in spec:
            path = join_path("spec", key)
            for i, item in enumerate(as_list(ctx, path, spec[key])):
                ipath = join_path(path, i)
                item = as_map(ctx, ipath, item)
                check_fields(ctx, ipath, item, ("cidr",))
                parse_cidr(ctx, join_path(ipath, "cidr"), item.get("cidr"))
    communities = as_list(ctx, "spec.communities", spec.get("communities", []))
    names = set()
    for i, c in enumerate(communities):
        path = f"spec.communities[{i}]"
        c = as_map(ctx, path, c)
        check_fields(ctx, path, c, ("name", "value"))
        value = as_str(ctx, join_path(path, "value"), c.get("value", ""))
        if not _community_ok(value):
            ctx.fail(
                join_path(path, "value"),
                f"{show(value)} is not a community 'aa:nn' (16-bit parts) or 'aa:nn:mm'"
                " (32-bit parts)",
            )
        names.add(as_str(ctx, join_path(path, "name"), c.get("name", "")))
    adverts = as_list(ctx, "spec.prefixAdvertisements", spec.get("prefixAdvertisements", []))
    if communities and not adverts:
        ctx.fail("spec.communities", "communities are defined but no prefixAdvertisements use"
                 " them")
    for i, adv in enumerate(adverts):
        path = f"spec.prefixAdvertisements[{i}]"
        adv = as_map(ctx, path, adv)
        check_fields(ctx, path, adv, ("cidr", "communities"))
        parse_cidr(ctx, join_path(path, "cidr"), adv.get("cidr"), allow_ip=True)
        for j, v in enumerate(as_str_list(ctx, join_path(path, "communities"),
                                          adv.get("communities", []))):
            if not _community_ok(v) and v not in names:
                ctx.fail(
                    f"{path}.communities[{j}]",
                    f"{show(v)} is neither a community value nor a name defined in"
                    " spec.communities",
                )
    if "listenPort" in spec:
        as_int(ctx, "spec.listenPort", spec["listenPort"], 1, 65535)
    if "bindMode" in spec:
        enum(ctx, "spec.bindMode", spec["bindMode"], ("None", "NodeIP"))
    for key in ("programClusterRoutes", "serviceLoadBalancerAggregation"):
        if key in spec:
            enum(ctx, join_path("spec", key), spec[key], ("Enabled", "Disabled"))
    if "ignoredInterfaces" in spec:
        ifaces = as_str_list(ctx, "spec.ignoredInterfaces", spec["ignoredInterfaces"])
        for i, iface in enumerate(ifaces):
            if iface == "*" or not _IGNORED_INTERFACE.match(iface):
                ctx.fail(
                    f"spec.ignoredInterfaces[{i}]",
                    f"{show(iface)} is not an interface name or pattern (1-15 of"
                    " [a-zA-Z0-9_.*-], not just '*')",
                )
    if "localWorkloadPeeringIPV4" in spec:
        parse_ip(ctx, "spec.localWorkloadPeeringIPV4", spec["localWorkloadPeeringIPV4"], 4)
    if "localWorkloadPeeringIPV6" in spec:
        parse_ip(ctx, "spec.localWorkloadPeeringIPV6", spec["localWorkloadPeeringIPV6"], 6)
    if "nodeMeshMaxRestartTime" in spec:
        check_duration(ctx, "spec.nodeMeshMaxRestartTime", spec["nodeMeshMaxRestartTime"])
    if "nodeMeshPassword" in spec:
        _password(ctx, "spec.nodeMeshPassword", spec["nodeMeshPassword"])
    if spec.get("nodeToNodeMeshEnabled") is False:
        for key in ("nodeMeshPassword", "nodeMeshMaxRestartTime"):
            if key in spec:
                ctx.fail(join_path("spec", key), "cannot be set when nodeToNodeMeshEnabled is"
                         " false")
