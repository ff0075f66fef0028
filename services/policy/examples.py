"""Builders for Felix dataplane messages, and the example batches the tests, the golden files,
the kernel tests and ``bench/policy.py`` compile.

The builders keep call sites short (``wep("cali1234", tiers=[tier("default", ingress=[pid])])``)
and spell out Felix's field names where they matter. ``SCENARIOS`` maps a name to one batch
that together exercises every rendering feature: rule matches and actions, tiers and profiles,
host endpoints, NAT outgoing and encapsulation, config variants, the dispatch tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from libcalico.api.felix import felixbackend_pb2 as fb

NET = fb.IPSetUpdate.NET
IP = fb.IPSetUpdate.IP
IP_AND_PORT = fb.IPSetUpdate.IP_AND_PORT

Port = int | tuple[int, int]


def ports(items: Iterable[Port]) -> list[fb.PortRange]:
    out = []
    for p in items:
        first, last = (p, p) if isinstance(p, int) else p
        out.append(fb.PortRange(first=first, last=last))
    return out


def proto(p: str | int) -> fb.Protocol:
    return fb.Protocol(number=p) if isinstance(p, int) else fb.Protocol(name=p)


def rule(action: str = "allow", *, protocol: str | int | None = None,
         not_protocol: str | int | None = None, src_ports: Iterable[Port] = (),
         dst_ports: Iterable[Port] = (), not_src_ports: Iterable[Port] = (),
         not_dst_ports: Iterable[Port] = (), icmp: tuple[int, int | None] | None = None,
         not_icmp: tuple[int, int | None] | None = None, ip_version: int = 0,
         annotations: dict[str, str] | None = None, **lists: Sequence[str]) -> fb.Rule:
    """A Felix rule; list fields (src_net, dst_ip_set_ids, …) are passed by their Felix names."""
    r = fb.Rule(action=action, ip_version=fb.IPVersion.ValueType(ip_version))
    if protocol is not None:
        r.protocol.CopyFrom(proto(protocol))
    if not_protocol is not None:
        r.not_protocol.CopyFrom(proto(not_protocol))
    r.src_ports.extend(ports(src_ports))
    r.dst_ports.extend(ports(dst_ports))
    r.not_src_ports.extend(ports(not_src_ports))
    r.not_dst_ports.extend(ports(not_dst_ports))
    if icmp is not None:
        if icmp[1] is None:
            r.icmp_type = icmp[0]
        else:
            r.icmp_type_code.CopyFrom(fb.IcmpTypeAndCode(type=icmp[0], code=icmp[1]))
    if not_icmp is not None:
        if not_icmp[1] is None:
            r.not_icmp_type = not_icmp[0]
        else:
            r.not_icmp_type_code.CopyFrom(fb.IcmpTypeAndCode(type=not_icmp[0], code=not_icmp[1]))
    for name, values in lists.items():
        getattr(r, name).extend(values)
    if annotations:
        r.metadata.annotations.update(annotations)
    return r


def pid(name: str, namespace: str = "", kind: str = "") -> fb.PolicyID:
    kind = kind or ("NetworkPolicy" if namespace else "GlobalNetworkPolicy")
    return fb.PolicyID(name=name, namespace=namespace, kind=kind)


def tier(name: str, ingress: Iterable[fb.PolicyID] = (), egress: Iterable[fb.PolicyID] = (),
         default_action: str = "Deny") -> fb.TierInfo:
    return fb.TierInfo(name=name, ingress_policies=list(ingress), egress_policies=list(egress),
                       default_action=default_action)


def config(**params: str) -> fb.ToDataplane:
    return fb.ToDataplane(config_update=fb.ConfigUpdate(config=params))


def encap(ipip: bool = False, vxlan: bool = False, vxlan_v6: bool = False) -> fb.ToDataplane:
    return fb.ToDataplane(encapsulation=fb.Encapsulation(
        ipip_enabled=ipip, vxlan_enabled=vxlan, vxlan_enabled_v6=vxlan_v6))


def ipset(set_id: str, members: Iterable[str], set_type: int = NET) -> fb.ToDataplane:
    return fb.ToDataplane(ipset_update=fb.IPSetUpdate(
        id=set_id, members=list(members), type=fb.IPSetUpdate.IPSetType.ValueType(set_type)))


def ipset_delta(set_id: str, added: Iterable[str] = (),
                removed: Iterable[str] = ()) -> fb.ToDataplane:
    return fb.ToDataplane(ipset_delta_update=fb.IPSetDeltaUpdate(
        id=set_id, added_members=list(added), removed_members=list(removed)))


def ipset_remove(set_id: str) -> fb.ToDataplane:
    return fb.ToDataplane(ipset_remove=fb.IPSetRemove(id=set_id))


def policy(p: fb.PolicyID, inbound: Iterable[fb.Rule] = (), outbound: Iterable[fb.Rule] = (),
           tier: str = "default", untracked: bool = False,
           pre_dnat: bool = False) -> fb.ToDataplane:
    return fb.ToDataplane(active_policy_update=fb.ActivePolicyUpdate(
        id=p, policy=fb.Policy(inbound_rules=list(inbound), outbound_rules=list(outbound),
                               tier=tier, untracked=untracked, pre_dnat=pre_dnat,
                               namespace=p.namespace)))


def policy_remove(p: fb.PolicyID) -> fb.ToDataplane:
    return fb.ToDataplane(active_policy_remove=fb.ActivePolicyRemove(id=p))


def profile(name: str, inbound: Iterable[fb.Rule] = (),
            outbound: Iterable[fb.Rule] = ()) -> fb.ToDataplane:
    return fb.ToDataplane(active_profile_update=fb.ActiveProfileUpdate(
        id=fb.ProfileID(name=name),
        profile=fb.Profile(inbound_rules=list(inbound), outbound_rules=list(outbound))))


def profile_remove(name: str) -> fb.ToDataplane:
    return fb.ToDataplane(active_profile_remove=fb.ActiveProfileRemove(
        id=fb.ProfileID(name=name)))


def wep_id(workload: str, endpoint: str = "eth0") -> fb.WorkloadEndpointID:
    return fb.WorkloadEndpointID(orchestrator_id="k8s", workload_id=workload,
                                 endpoint_id=endpoint)


def wep(iface: str, workload: str = "", *, tiers: Iterable[fb.TierInfo] = (),
        profiles: Iterable[str] = (), ipv4: Iterable[str] = (), ipv6: Iterable[str] = (),
        state: str = "active", nat: Iterable[tuple[str, str]] = (),
        spoof: Iterable[str] = ()) -> fb.ToDataplane:
    return fb.ToDataplane(workload_endpoint_update=fb.WorkloadEndpointUpdate(
        id=wep_id(workload or f"default/{iface}"),
        endpoint=fb.WorkloadEndpoint(
            state=state, name=iface, profile_ids=list(profiles), ipv4_nets=list(ipv4),
            ipv6_nets=list(ipv6), tiers=list(tiers),
            ipv4_nat=[fb.NatInfo(ext_ip=e, int_ip=i) for e, i in nat],
            allow_spoofed_source_prefixes=list(spoof))))


def wep_remove(iface: str, workload: str = "") -> fb.ToDataplane:
    return fb.ToDataplane(workload_endpoint_remove=fb.WorkloadEndpointRemove(
        id=wep_id(workload or f"default/{iface}")))


def hep(endpoint_id: str, iface: str, *, tiers: Iterable[fb.TierInfo] = (),
        profiles: Iterable[str] = (), untracked: Iterable[fb.TierInfo] = (),
        pre_dnat: Iterable[fb.TierInfo] = (),
        forward: Iterable[fb.TierInfo] = ()) -> fb.ToDataplane:
    return fb.ToDataplane(host_endpoint_update=fb.HostEndpointUpdate(
        id=fb.HostEndpointID(endpoint_id=endpoint_id),
        endpoint=fb.HostEndpoint(name=iface, profile_ids=list(profiles), tiers=list(tiers),
                                 untracked_tiers=list(untracked),
                                 pre_dnat_tiers=list(pre_dnat), forward_tiers=list(forward))))


def pool(pool_id: str, cidr: str, masquerade: bool = False) -> fb.ToDataplane:
    return fb.ToDataplane(ipam_pool_update=fb.IPAMPoolUpdate(
        id=pool_id, pool=fb.IPAMPool(cidr=cidr, masquerade=masquerade)))


def pool_remove(pool_id: str) -> fb.ToDataplane:
    return fb.ToDataplane(ipam_pool_remove=fb.IPAMPoolRemove(id=pool_id))


def host(hostname: str, ipv4: str = "", ipv6: str = "") -> fb.ToDataplane:
    return fb.ToDataplane(host_metadata_update=fb.HostMetadataUpdate(
        hostname=hostname, ipv4_addr=ipv4, ipv6_addr=ipv6))


# -- scenarios -----------------------------------------------------------------------------

ALLOW_WEB = pid("allow-web", "default")
KNS = "kns.default"
KSA = "ksa.default.default"


def workload() -> list[fb.ToDataplane]:
    """One pod with one Kubernetes-style policy and its namespace/serviceaccount profiles."""
    return [
        ipset("s:frontend", ["10.65.0.10/32", "10.65.0.11/32", "fd00:65::10/128"]),
        policy(ALLOW_WEB, inbound=[
            rule("allow", protocol="tcp", dst_ports=[80], src_ip_set_ids=["s:frontend"]),
        ]),
        profile(KNS, inbound=[rule("allow")], outbound=[rule("allow")]),
        profile(KSA),
        wep("cali12345678901", "default/web-0", ipv4=["10.65.0.2/32"],
            ipv6=["fd00:65::2/128"], profiles=[KNS, KSA],
            tiers=[tier("default", ingress=[ALLOW_WEB])]),
    ]


RULES = pid("rules-matrix", "prod")


def rules() -> list[fb.ToDataplane]:
    """One policy whose rules use every match field and action Felix renders."""
    many = list(range(7000, 7020))  # 20 single ports: two multiport groups
    ranges: list[Port] = [(10000 + 10 * i, 10005 + 10 * i) for i in range(9)]  # 18 slots
    inbound = [
        rule("allow", protocol="tcp", dst_ports=[80, 443, (8000, 8080)],
             src_ip_set_ids=["s:web"], annotations={"owner": "team-a", "why": "web tier"}),
        rule("deny", protocol="udp", dst_ports=many),
        rule("log"),
        rule("allow", protocol="icmp", icmp=(8, 0)),
        rule("allow", protocol="icmp", icmp=(3, None), not_icmp=(3, 4)),
        rule("pass", src_net=["10.1.0.0/16", "10.2.0.0/16"], not_dst_net=["10.3.0.0/24"]),
        rule("allow", src_net=["172.16.0.0/12"],
             not_src_net=["172.16.1.0/24", "172.16.2.0/24"]),
        rule("allow", protocol=132, dst_ports=[9999]),
        rule("allow", protocol="sctp", src_ports=[5000]),
        rule("allow", not_protocol="udp", dst_ip_set_ids=["s:db"]),
        rule("allow", protocol="tcp", dst_ports=[8443], dst_named_port_ip_set_ids=["n:http"]),
        rule("allow", protocol="tcp", src_named_port_ip_set_ids=["n:http"]),
        rule("deny", protocol="tcp", not_src_ip_set_ids=["s:not-me"],
             not_dst_ports=[22, (6000, 6100)], not_dst_ip_set_ids=["s:db"]),
        rule("allow", protocol="icmpv6", icmp=(128, None), ip_version=6),
        rule("allow", src_net=["192.168.0.0/16", "fd00:1::/64"]),
        rule("allow", protocol="tcp", dst_ip_port_set_ids=["svc:api"]),
        # serviceAccountSelector and namespaceSelector arrive compiled to IP-set IDs.
        rule("allow", src_ip_set_ids=["s:sa-frontend", "s:ns-prod"]),
        rule("deny", not_dst_net=["0.0.0.0/0"]),
        rule("next-tier", protocol="udp", src_ports=[53], dst_net=["10.96.0.10/32"]),
    ]
    outbound = [
        rule("allow", protocol="tcp", dst_net=["10.0.0.0/8", "192.168.0.0/16"],
             dst_ports=ranges),
        rule("deny", protocol="tcp", dst_ports=[25], not_src_ports=[1024]),
    ]
    return [
        ipset("s:web", ["10.0.1.1/32", "10.0.1.2/32", "fd00:1::1/128"]),
        ipset("s:db", ["10.0.2.0/24"]),
        ipset("s:not-me", ["10.0.3.3/32"]),
        ipset("s:sa-frontend", ["10.0.4.4/32"]),
        ipset("s:ns-prod", ["10.0.4.0/24", "10.0.4.4/32"]),
        ipset("n:http", ["10.0.1.1,tcp:8080", "10.0.1.2,tcp:8080"], IP_AND_PORT),
        ipset("svc:api", ["10.96.0.1,tcp:443"], IP_AND_PORT),
        policy(RULES, inbound=inbound, outbound=outbound),
        wep("cali0000rules01", "prod/rules", tiers=[tier("default", ingress=[RULES],
                                                         egress=[RULES])]),
    ]


def tiers() -> list[fb.ToDataplane]:
    """Two tiers (one defaulting to Pass), a staged policy, an admin-down and a v6 endpoint."""
    sec1 = pid("block-bad", kind="GlobalNetworkPolicy")
    sec2 = pid("log-all", kind="GlobalNetworkPolicy")
    staged = pid("try-this", "default", "StagedNetworkPolicy")
    knp = pid("knp.default.allow-dns", "default", "KubernetesNetworkPolicy")
    return [
        ipset("s:bad", ["10.66.6.6/32"]),
        policy(sec1, tier="security", inbound=[rule("deny", src_ip_set_ids=["s:bad"]),
                                               rule("pass")],
               outbound=[rule("pass")]),
        policy(sec2, tier="security", inbound=[rule("log")]),
        policy(staged, inbound=[rule("deny")]),
        policy(knp, outbound=[rule("allow", protocol="udp", dst_ports=[53])]),
        profile(KNS, inbound=[rule("allow")], outbound=[rule("allow")]),
        wep("cali00000tier01", "default/tiered", profiles=[KNS], tiers=[
            tier("security", ingress=[sec1, sec2], egress=[sec1], default_action="Pass"),
            tier("default", ingress=[staged], egress=[knp, staged]),
        ]),
        wep("cali00000tier02", "default/down", state="inactive", profiles=[KNS]),
        wep("cali00000tier03", "default/v6only", ipv6=["fd00:65::3/128"], profiles=[KNS]),
    ]


def host_endpoints() -> list[fb.ToDataplane]:
    """Named and wildcard host endpoints with normal, untracked, pre-DNAT and forward policy."""
    ssh = pid("allow-ssh", kind="GlobalNetworkPolicy")
    notrack = pid("no-track-dns", kind="GlobalNetworkPolicy")
    prednat = pid("block-nodeports", kind="GlobalNetworkPolicy")
    fwd = pid("forward-filter", kind="GlobalNetworkPolicy")
    return [
        ipset("s:admins", ["192.0.2.0/24"]),
        policy(ssh, inbound=[rule("allow", protocol="tcp", dst_ports=[22],
                                  src_ip_set_ids=["s:admins"])]),
        policy(notrack, untracked=True, inbound=[rule("allow", protocol="udp", dst_ports=[53])],
               outbound=[rule("allow", protocol="udp", src_ports=[53])]),
        policy(prednat, pre_dnat=True,
               inbound=[rule("deny", protocol="tcp", dst_ports=[(30000, 32767)])]),
        policy(fwd, inbound=[rule("allow", dst_net=["10.65.0.0/16"])],
               outbound=[rule("deny", dst_net=["169.254.169.254/32"])]),
        profile("host-default", inbound=[rule("allow")], outbound=[rule("allow")]),
        hep("node1-eth0", "eth0", profiles=["host-default"],
            tiers=[tier("default", ingress=[ssh], egress=[ssh])],
            untracked=[tier("default", ingress=[notrack], egress=[notrack])],
            pre_dnat=[tier("default", ingress=[prednat])],
            forward=[tier("default", ingress=[fwd], egress=[fwd])]),
        hep("node1-all", "*", profiles=["host-default"],
            tiers=[tier("default", ingress=[ssh])]),
    ]


def nat_encap() -> list[fb.ToDataplane]:
    """natOutgoing pools, IPIP + VXLAN with known hosts, floating IPs, spoofing allowed."""
    return [
        config(IpInIpTunnelAddr="10.65.0.1", IPv4VXLANTunnelAddr="10.65.0.129"),
        encap(ipip=True, vxlan=True),
        pool("default-ipv4-ippool", "10.65.0.0/16", masquerade=True),
        pool("no-nat", "10.66.0.0/16"),
        pool("v6", "fd00:65::/64", masquerade=True),
        host("node1", "192.168.0.1"),
        host("node2", "192.168.0.2", "fd00:192::2"),
        profile(KNS, inbound=[rule("allow")], outbound=[rule("allow")]),
        wep("cali000000nat01", "default/fip", ipv4=["10.65.0.5/32"], profiles=[KNS],
            nat=[("203.0.113.5", "10.65.0.5")], spoof=["10.99.0.0/24", "fd00:99::/64"]),
    ]


def config_variants() -> list[fb.ToDataplane]:
    """Non-default Felix parameters that change rendered rules."""
    p = pid("log-and-deny", "default")
    return [
        config(IptablesMarkMask="0xff000000", IptablesFilterDenyAction="REJECT",
               IptablesFilterAllowAction="RETURN", IptablesMangleAllowAction="RETURN",
               DefaultEndpointToHostAction="ACCEPT", LogPrefix="calico-%k-%p",
               DisableConntrackInvalidCheck="true", AllowVXLANPacketsFromWorkloads="true",
               AllowIPIPPacketsFromWorkloads="false",
               FailsafeInboundHostPorts="tcp:22,udp:68,tcp:10.0.0.0/8:179,tcp:[fd00::/8]:2379",
               FailsafeOutboundHostPorts="udp:53", NATOutgoingAddress="198.51.100.7",
               NATPortRange="32768:65535", IptablesNATOutgoingInterfaceFilter="eth0",
               InterfacePrefix="cali,tap"),
        pool("p", "10.70.0.0/16", masquerade=True),
        policy(p, inbound=[rule("log", protocol="tcp"), rule("deny")]),
        wep("cali00000conf01", "default/conf", tiers=[tier("default", ingress=[p])]),
        wep("tap00000conf02", "default/vm", profiles=[]),
    ]


def dispatch() -> list[fb.ToDataplane]:
    """Interfaces that share prefixes, so the iptables dispatch chains grow child chains."""
    names = ["cali1aaaaaaaaaa", "cali1bbbbbbbbbb", "cali1cccccccccc", "cali2aaaaaaaaaa",
             "calibbbbbbbbbbb", "calibbbbbbbbbbc"]
    return [profile(KNS, inbound=[rule("allow")], outbound=[rule("allow")])] + [
        wep(n, f"default/{n}", profiles=[KNS]) for n in names
    ]


def long_names() -> list[fb.ToDataplane]:
    """IDs too long for 28 characters: policy and profile chains get hashed names."""
    p1 = pid("a-policy-with-a-rather-long-name", "a-namespace-that-is-long")
    p2 = pid("short", "ns")
    prof = "ksa.a-namespace-that-is-long.a-service-account"
    return [
        policy(p1, inbound=[rule("allow")]),
        policy(p2, inbound=[rule("allow")]),
        profile(prof, inbound=[rule("allow")]),
        wep("cali0000long001", "x/long", profiles=[prof],
            tiers=[tier("default", ingress=[p1, p2])]),
    ]


SCENARIOS = {
    "workload": workload,
    "rules": rules,
    "tiers": tiers,
    "host_endpoints": host_endpoints,
    "nat_encap": nat_encap,
    "config_variants": config_variants,
    "dispatch": dispatch,
    "long_names": long_names,
}
