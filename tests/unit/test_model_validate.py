"""validate(): every rule, good and bad, checking that errors name the field and the value."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from libcalico.errors import ValidationError
from libcalico.model import validate

V3 = "projectcalico.org/v3"


def mk(kind: str, spec: dict[str, Any] | None = None, name: str | None = "x", **meta: Any) -> Any:
    metadata: dict[str, Any] = dict(meta)
    if name is not None:
        metadata["name"] = name
    out: dict[str, Any] = {"apiVersion": V3, "kind": kind, "metadata": metadata}
    if spec is not None:
        out["spec"] = spec
    return out


def pool(**spec: Any) -> Any:
    return mk("IPPool", {"cidr": "10.0.0.0/16", **spec}, name="p")


def np(*ingress: Any, egress: list[Any] | None = None, **spec: Any) -> Any:
    body: dict[str, Any] = dict(spec)
    if ingress:
        body["ingress"] = list(ingress)
    if egress is not None:
        body["egress"] = egress
    return mk("NetworkPolicy", body, name="p", namespace="dev")


def gnp(*ingress: Any, **spec: Any) -> Any:
    body: dict[str, Any] = dict(spec)
    if ingress:
        body["ingress"] = list(ingress)
    return mk("GlobalNetworkPolicy", body, name="p")


def rule(**kw: Any) -> dict[str, Any]:
    return {"action": "Allow", **kw}


def tcp_to(*ports: Any) -> dict[str, Any]:
    return rule(protocol="TCP", destination={"ports": list(ports)})


PEER = {"peerIP": "10.0.0.1", "asNumber": 64512}
WEP_SPEC = {
    "node": "node-1",
    "orchestrator": "k8s",
    "pod": "web-1",
    "endpoint": "eth0",
    "interfaceName": "cali12345",
    "ipNetworks": ["10.0.0.5/32"],
}
WEP_NAME = "node--1-k8s-web--1-eth0"

BAD: list[tuple[str, Any, str, str]] = [
    # envelope and metadata
    ("unknown kind", {**pool(), "kind": "IPPol"}, "kind", "'IPPol'"),
    ("wrong apiVersion", {**pool(), "apiVersion": "v1"}, "apiVersion", "'v1'"),
    ("unknown top-level field", {**pool(), "specs": {}}, "specs", "unknown field 'specs'"),
    ("status on a kind without one", {**mk("Profile"), "status": {}}, "status", "unknown"),
    ("misspelt metadata", mk("Profile", lables={}), "metadata.lables", "did you mean 'labels'"),
    ("missing name", mk("Profile", name=None), "metadata.name", "needs a name"),
    ("upper-case name", mk("Profile", name="Bad_Name"), "metadata.name", "'Bad_Name'"),
    ("name too long", mk("Profile", name="a" * 254), "metadata.name", "254 characters"),
    ("namespace on cluster kind", mk("Profile", namespace="dev"), "metadata.namespace", "'dev'"),
    ("bad namespace", mk("NetworkSet", namespace="Dev.X"), "metadata.namespace", "'Dev.X'"),
    ("bad label key", mk("Profile", labels={"-a": "b"}), "metadata.labels.-a", "'-a'"),
    ("bad label value", mk("Profile", labels={"a": "b c"}), "metadata.labels.a", "'b c'"),
    ("label value type", mk("Profile", labels={"a": 1}), "metadata.labels.a", "string"),
    ("bad annotation", mk("Profile", annotations={"a/b/c": "x"}), "metadata.annotations.a/b/c",
     "'a/b/c'"),
    ("resourceVersion type", mk("Profile", resourceVersion=5), "metadata.resourceVersion",
     "string"),
    ("spec not a mapping", mk("Profile", spec=[]), "spec", "mapping"),  # type: ignore[arg-type]
    # IPPool
    ("misspelt pool field", pool(cidrs=1), "spec.cidrs", "did you mean 'cidr'"),
    ("pool without cidr", mk("IPPool", {}, name="p"), "spec.cidr", "needs a CIDR"),
    ("pool cidr without prefix", pool(cidr="10.0.0.0"), "spec.cidr", "not a CIDR"),
    ("pool cidr host bits", pool(cidr="10.0.0.1/16"), "spec.cidr", "host bits"),
    ("pool cidr garbage", pool(cidr="300.0.0.0/8"), "spec.cidr", "'300.0.0.0/8'"),
    ("pool cidr number", pool(cidr=10), "spec.cidr", "string"),
    ("blockSize too small", pool(blockSize=19), "spec.blockSize", "19 is out of range 20-32"),
    ("blockSize too big", pool(blockSize=33), "spec.blockSize", "33 is out of range 20-32"),
    ("v6 blockSize too small", pool(cidr="fd00::/48", blockSize=115), "spec.blockSize",
     "115 is out of range 116-128 for an IPv6 pool"),
    ("v6 blockSize too big", pool(cidr="fd00::/48", blockSize=129), "spec.blockSize",
     "116-128"),
    ("blockSize as text", pool(blockSize="26"), "spec.blockSize", "integer"),
    ("pool smaller than a block", pool(cidr="10.0.0.0/28"), "spec.cidr", "smaller than one /26"),
    ("v6 pool smaller than a block", pool(cidr="fd00::/124"), "spec.cidr", "/122"),
    ("ipipMode value", pool(ipipMode="Sometimes"), "spec.ipipMode",
     "'Sometimes' is not one of Never, Always, CrossSubnet"),
    ("vxlanMode case", pool(vxlanMode="always"), "spec.vxlanMode", "'always'"),
    ("both encapsulations", pool(ipipMode="Always", vxlanMode="CrossSubnet"), "spec.vxlanMode",
     "both IPIP and VXLAN"),
    ("IPIP on IPv6", pool(cidr="fd00::/48", ipipMode="CrossSubnet"), "spec.ipipMode", "IPv6"),
    ("link-local pool", pool(cidr="169.254.0.0/16"), "spec.cidr", "link-local"),
    ("v6 link-local pool", pool(cidr="fe80::/64"), "spec.cidr", "link-local"),
    ("unknown allowed use", pool(allowedUses=["Storage"]), "spec.allowedUses[0]", "'Storage'"),
    ("LoadBalancer mixed", pool(allowedUses=["LoadBalancer", "Workload"]), "spec.allowedUses",
     "Workload"),
    ("LoadBalancer with IPIP", pool(allowedUses=["LoadBalancer"], ipipMode="Always"),
     "spec.ipipMode", "LoadBalancer"),
    ("natOutgoing as text", pool(natOutgoing="true"), "spec.natOutgoing", "true or false"),
    ("bad nodeSelector", pool(nodeSelector="a =="), "spec.nodeSelector", "invalid selector"),
    ("assignmentMode", pool(assignmentMode="Auto"), "spec.assignmentMode", "Automatic, Manual"),
    # IPReservation
    ("reserved CIDR", mk("IPReservation", {"reservedCIDRs": ["10.0.0.0/33"]}),
     "spec.reservedCIDRs[0]", "'10.0.0.0/33'"),
    # Node
    ("AS number zero", mk("Node", {"bgp": {"asNumber": 0}}), "spec.bgp.asNumber",
     "0 is out of range 1-4294967295"),
    ("AS number too big", mk("Node", {"bgp": {"asNumber": 4294967296}}), "spec.bgp.asNumber",
     "4294967296"),
    ("dotted AS part too big", mk("Node", {"bgp": {"asNumber": "1.65536"}}), "spec.bgp.asNumber",
     "0-65535"),
    ("AS number text", mk("Node", {"bgp": {"asNumber": "abc"}}), "spec.bgp.asNumber", "'abc'"),
    ("AS number bool", mk("Node", {"bgp": {"asNumber": True}}), "spec.bgp.asNumber", "true"),
    ("node v4 address family", mk("Node", {"bgp": {"ipv4Address": "fd00::1/64"}}),
     "spec.bgp.ipv4Address", "not an IPv4"),
    ("route reflector cluster id", mk("Node", {"bgp": {"routeReflectorClusterID": "x"}}),
     "spec.bgp.routeReflectorClusterID", "'x'"),
    ("empty bgp", mk("Node", {"bgp": {}}), "spec.bgp", "must not be empty"),
    ("bgp typo", mk("Node", {"bgp": {"asnumber": 1}}), "spec.bgp.asnumber", "asNumber"),
    ("bad MAC", mk("Node", {"vxlanTunnelMACAddr": "zz"}), "spec.vxlanTunnelMACAddr", "'zz'"),
    ("address type", mk("Node", {"addresses": [{"address": "10.0.0.1", "type": "Public"}]}),
     "spec.addresses[0].type", "'Public'"),
    # BGPPeer
    ("peerIP and peerSelector", mk("BGPPeer", {**PEER, "peerSelector": "all()"}),
     "spec.peerSelector", "only one of"),
    ("node and nodeSelector", mk("BGPPeer", {**PEER, "node": "n", "nodeSelector": "all()"}),
     "spec.node", "not both"),
    ("peerSelector with ASN", mk("BGPPeer", {"peerSelector": "all()", "asNumber": 1}),
     "spec.asNumber", "must be empty"),
    ("peerIP without ASN", mk("BGPPeer", {"peerIP": "10.0.0.1"}), "spec.asNumber", "required"),
    ("peer with nothing", mk("BGPPeer", {"node": "n"}), "spec.peerIP", "needs peerIP"),
    ("bad peerIP", mk("BGPPeer", {**PEER, "peerIP": "10.0.0.300"}), "spec.peerIP",
     "'10.0.0.300'"),
    ("peerIP port zero", mk("BGPPeer", {**PEER, "peerIP": "10.0.0.1:0"}), "spec.peerIP",
     "out of range"),
    ("reachableBy without peerIP",
     mk("BGPPeer", {"peerSelector": "all()", "reachableBy": "10.0.0.1"}), "spec.reachableBy",
     "needs peerIP"),
    ("reachableBy family", mk("BGPPeer", {**PEER, "reachableBy": "fd00::1"}), "spec.reachableBy",
     "different IP versions"),
    ("next hop both ways", mk("BGPPeer", {**PEER, "keepOriginalNextHop": True,
                                          "nextHopMode": "Self"}),
     "spec.keepOriginalNextHop", "nextHopMode"),
    ("nextHopMode value", mk("BGPPeer", {**PEER, "nextHopMode": "Other"}), "spec.nextHopMode",
     "Auto, Self, Keep"),
    ("peer node selector", mk("BGPPeer", {**PEER, "nodeSelector": "!"}), "spec.nodeSelector",
     "invalid selector"),
    # BGPConfiguration
    ("bgp config name", mk("BGPConfiguration", {}, name="global"), "metadata.name",
     "'default'"),
    ("bgp config node name", mk("BGPConfiguration", {}, name="node.Bad"), "metadata.name",
     "node.<name>"),
    ("log severity", mk("BGPConfiguration", {"logSeverityScreen": "Verbose"}, name="default"),
     "spec.logSeverityScreen", "'Verbose'"),
    ("mesh password without mesh",
     mk("BGPConfiguration", {"nodeToNodeMeshEnabled": False,
                             "nodeMeshPassword": {"secretKeyRef": {"name": "s", "key": "k"}}},
        name="default"),
     "spec.nodeMeshPassword", "nodeToNodeMeshEnabled"),
    ("listen port", mk("BGPConfiguration", {"listenPort": 0}, name="default"), "spec.listenPort",
     "0 is out of range 1-65535"),
    ("community value", mk("BGPConfiguration", {"communities": [{"name": "a",
                                                                 "value": "65536:1"}],
                                                "prefixAdvertisements": [{"cidr": "10.0.0.0/8"}]},
                           name="default"),
     "spec.communities[0].value", "'65536:1'"),
    ("unused communities", mk("BGPConfiguration", {"communities": [{"name": "a",
                                                                    "value": "1:1"}]},
                              name="default"),
     "spec.communities", "prefixAdvertisements"),
    ("service cidr", mk("BGPConfiguration", {"serviceClusterIPs": [{"cidr": "x"}]},
                        name="default"),
     "spec.serviceClusterIPs[0].cidr", "'x'"),
    # FelixConfiguration
    ("felix name", mk("FelixConfiguration", {}, name="foo"), "metadata.name",
     "nodeSelector"),
    ("felix nodeSelector on default",
     mk("FelixConfiguration", {"nodeSelector": "all()"}, name="default"), "spec.nodeSelector",
     "selector-scoped"),
    ("felix typo", mk("FelixConfiguration", {"ipipMtu": 1400}, name="default"), "spec.ipipMtu",
     "did you mean 'ipipMTU'"),
    ("felix bool", mk("FelixConfiguration", {"bpfEnabled": "true"}, name="default"),
     "spec.bpfEnabled", "true or false"),
    ("felix duration", mk("FelixConfiguration", {"routeRefreshInterval": "10 seconds"},
                          name="default"),
     "spec.routeRefreshInterval", "'10 seconds'"),
    ("felix uint32", mk("FelixConfiguration", {"vxlanVNI": -1}, name="default"),
     "spec.vxlanVNI", "-1 is out of range"),
    ("felix nat address", mk("FelixConfiguration", {"natOutgoingAddress": "fd00::1"},
                             name="default"),
     "spec.natOutgoingAddress", "IPv4"),
    ("felix route table range", mk("FelixConfiguration", {"routeTableRange": {"min": 0,
                                                                             "max": 10}},
                                   name="default"),
     "spec.routeTableRange", "1..250"),
    ("felix enum", mk("FelixConfiguration", {"chainInsertMode": "Sideways"}, name="default"),
     "spec.chainInsertMode", "Insert, Append"),
    ("felix failsafe protocol",
     mk("FelixConfiguration", {"failsafeInboundHostPorts": [{"protocol": "ICMP", "port": 1}]},
        name="default"),
     "spec.failsafeInboundHostPorts[0].protocol", "'ICMP'"),
    # ClusterInformation / KubeControllersConfiguration
    ("cluster info name", mk("ClusterInformation", {}, name="other"), "metadata.name",
     "'default'"),
    ("datastoreReady", mk("ClusterInformation", {"datastoreReady": "yes"}, name="default"),
     "spec.datastoreReady", "true or false"),
    ("kcc name", mk("KubeControllersConfiguration", {}, name="x"), "metadata.name", "'default'"),
    ("kcc health", mk("KubeControllersConfiguration", {"healthChecks": "On"}, name="default"),
     "spec.healthChecks", "Enabled, Disabled"),
    ("kcc controller field",
     mk("KubeControllersConfiguration", {"controllers": {"node": {"syncLables": "Enabled"}}},
        name="default"),
     "spec.controllers.node.syncLables", "syncLabels"),
    # HostEndpoint
    ("hep without node", mk("HostEndpoint", {"interfaceName": "eth0"}), "spec.node", "node"),
    ("hep without interface", mk("HostEndpoint", {"node": "n"}), "spec.interfaceName",
     "expectedIPs"),
    ("hep interface too long", mk("HostEndpoint", {"node": "n", "interfaceName": "a" * 16}),
     "spec.interfaceName", "1-15"),
    ("hep expected IP", mk("HostEndpoint", {"node": "n", "expectedIPs": ["10.0.0.0/24"]}),
     "spec.expectedIPs[0]", "'10.0.0.0/24'"),
    ("hep port protocol", mk("HostEndpoint", {"node": "n", "interfaceName": "eth0",
                                              "ports": [{"name": "p", "protocol": "ICMP",
                                                         "port": 1}]}),
     "spec.ports[0].protocol", "no ports"),
    # WorkloadEndpoint
    ("wep name mismatch", mk("WorkloadEndpoint", WEP_SPEC, name="wrong", namespace="dev"),
     "metadata.name", WEP_NAME),
    ("wep without endpoint", mk("WorkloadEndpoint", {**WEP_SPEC, "endpoint": None}, name=None),
     "spec.endpoint", "must be set"),
    ("wep pod with leading dash", mk("WorkloadEndpoint", {**WEP_SPEC, "pod": "-web"}, name=None),
     "spec.pod", "'-web'"),
    ("wep wide network", mk("WorkloadEndpoint", {**WEP_SPEC, "ipNetworks": ["10.0.0.0/24"]},
                            name=None),
     "spec.ipNetworks[0]", "more than one address"),
    ("wep NAT outside networks",
     mk("WorkloadEndpoint", {**WEP_SPEC, "ipNATs": [{"internalIP": "10.0.0.9",
                                                     "externalIP": "1.2.3.4"}]}, name=None),
     "spec.ipNATs[0].internalIP", "10.0.0.9"),
    ("wep without interface", mk("WorkloadEndpoint", {**WEP_SPEC, "interfaceName": None},
                                 name=None),
     "spec.interfaceName", "string"),
    ("wep MAC", mk("WorkloadEndpoint", {**WEP_SPEC, "mac": "aa:bb"}, name=None), "spec.mac",
     "'aa:bb'"),
    ("wep port without name", mk("WorkloadEndpoint", {**WEP_SPEC, "ports": [
        {"protocol": "TCP", "port": 80}]}, name=None), "spec.ports[0].name", "hostPort"),
    # Profile, network sets
    ("profile rule", mk("Profile", {"ingress": [{"action": "Accept"}]}),
     "spec.ingress[0].action", "'Accept'"),
    ("profile labels", mk("Profile", {"labelsToApply": {"a b": "c"}}), "spec.labelsToApply.a b",
     "'a b'"),
    ("network set net", mk("NetworkSet", {"nets": ["10.0.0.0/40"]}, namespace="dev"),
     "spec.nets[0]", "'10.0.0.0/40'"),
    ("network set namespace label",
     mk("GlobalNetworkSet", {}, labels={"projectcalico.org/namespace": "x"}),
     "metadata.labels.projectcalico.org/namespace", "reserved"),
    # Tier
    ("tier name with dot", mk("Tier", {}, name="a.b"), "metadata.name", "no dots"),
    ("default tier order", mk("Tier", {"order": 5}, name="default"), "spec.order",
     "must be 1000000, got 5"),
    ("default tier unset order", mk("Tier", {}, name="default"), "spec.order", "unset"),
    ("kube-admin action", mk("Tier", {"order": 1000, "defaultAction": "Deny"},
                             name="kube-admin"),
     "spec.defaultAction", "Pass"),
    ("tier action", mk("Tier", {"defaultAction": "Allow"}), "spec.defaultAction",
     "'Allow' is not one of Deny, Pass"),
    ("tier order text", mk("Tier", {"order": "first"}), "spec.order", "number"),
    # NetworkPolicy spec
    ("policy name two dots", mk("NetworkPolicy", {}, name="a.b.c"), "metadata.name", "'a.b.c'"),
    ("policy tier", np(tier="Bad_Tier"), "spec.tier", "'Bad_Tier'"),
    ("policy order", np(order="high"), "spec.order", "'high'"),
    ("policy selector", np(selector="a = 'b'"), "spec.selector", "invalid selector"),
    ("policy selector global", np(selector="global()"), "spec.selector", "namespaceSelector"),
    ("duplicate types", np(types=["Ingress", "Ingress"]), "spec.types", "more than once"),
    ("lower-case type", np(types=["ingress"]), "spec.types[0]", "Ingress, Egress"),
    ("performance hint", np(performanceHints=["Fast"]), "spec.performanceHints[0]", "'Fast'"),
    ("unknown policy field", np(ingres=[]), "spec.ingres", "did you mean 'ingress'"),
    ("rules not a list", np(ingress={}), "spec.ingress", "list"),
    # rules
    ("rule without action", np({}), "spec.ingress[0].action", "Allow, Deny, Log, Pass"),
    ("lower-case action", np({"action": "allow"}), "spec.ingress[0].action", "case-sensitive"),
    ("unknown action", np({"action": "Drop"}), "spec.ingress[0].action", "'Drop'"),
    ("misspelt rule field", np({"action": "Allow", "acton": 1}), "spec.ingress[0].acton",
     "did you mean 'action'"),
    ("lower-case protocol", np(rule(protocol="tcp")), "spec.ingress[0].protocol",
     "'tcp' is not one of TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 1-255"),
    ("protocol zero", np(rule(protocol=0)), "spec.ingress[0].protocol", "out of range 1-255"),
    ("protocol 256", np(rule(protocol=256)), "spec.ingress[0].protocol", "256"),
    ("notProtocol", np(rule(notProtocol="IP")), "spec.ingress[0].notProtocol", "'IP'"),
    ("ports without protocol", np(rule(destination={"ports": [80]})),
     "spec.ingress[0].destination.ports", "no protocol is set"),
    ("ports with ICMP", np(rule(protocol="ICMP", source={"ports": [80]})),
     "spec.ingress[0].source.ports", "protocol is 'ICMP'"),
    ("notPorts with protocol 1", np(rule(protocol=1, destination={"notPorts": [80]})),
     "spec.ingress[0].destination.notPorts", "TCP, UDP or SCTP"),
    ("port zero", np(tcp_to(0)), "spec.ingress[0].destination.ports[0]", "out of range 1-65535"),
    ("port too big", np(tcp_to(65536)), "spec.ingress[0].destination.ports[0]", "65536"),
    ("port text too big", np(tcp_to("70000")), "spec.ingress[0].destination.ports[0]",
     "'70000'"),
    ("reversed range", np(tcp_to("90:80")), "spec.ingress[0].destination.ports[0]",
     "minimum 90 is greater than maximum 80"),
    ("range out of range", np(tcp_to("0:80")), "spec.ingress[0].destination.ports[0]",
     "out of range"),
    ("bad port name", np(tcp_to("web port")), "spec.ingress[0].destination.ports[0]",
     "'web port'"),
    ("port bool", np(tcp_to(True)), "spec.ingress[0].destination.ports[0]", "true"),
    ("icmp without protocol", np(rule(icmp={"type": 8})), "spec.ingress[0].icmp",
     "no protocol is set"),
    ("icmp with TCP", np(rule(protocol="TCP", icmp={"type": 8})), "spec.ingress[0].icmp",
     "protocol is 'TCP'"),
    ("icmp type 255", np(rule(protocol="ICMP", icmp={"type": 255})), "spec.ingress[0].icmp.type",
     "255 is out of range 0-254"),
    ("icmp code 256", np(rule(protocol="ICMP", icmp={"type": 3, "code": 256})),
     "spec.ingress[0].icmp.code", "256 is out of range 0-255"),
    ("icmp code without type", np(rule(protocol="ICMP", icmp={"code": 1})),
     "spec.ingress[0].icmp.code", "needs an ICMP type"),
    ("notICMP code without type", np(rule(protocol="ICMP", notICMP={"code": 1})),
     "spec.ingress[0].notICMP.code", "needs an ICMP type"),
    ("icmp field", np(rule(protocol="ICMP", icmp={"typ": 1})), "spec.ingress[0].icmp.typ",
     "did you mean 'type'"),
    ("ICMP on IPv6", np(rule(protocol="ICMP", ipVersion=6)), "spec.ingress[0].ipVersion",
     "needs 4"),
    ("ICMPv6 on IPv4", np(rule(protocol="ICMPv6", ipVersion=4)), "spec.ingress[0].ipVersion",
     "needs 6"),
    ("ipVersion 5", np(rule(ipVersion=5)), "spec.ingress[0].ipVersion", "5 is not 4 or 6"),
    ("mixed families", np(rule(source={"nets": ["10.0.0.0/8"]},
                               destination={"nets": ["fd00::/8"]})),
     "spec.ingress[0]", "mix IPv4 and IPv6"),
    ("net host bits", np(rule(source={"nets": ["10.0.0.1/8"]})), "spec.ingress[0].source.nets[0]",
     "host bits"),
    ("net without prefix", np(rule(source={"notNets": ["10.0.0.1"]})),
     "spec.ingress[0].source.notNets[0]", "not a CIDR"),
    ("net vs ipVersion", np(rule(ipVersion=6, source={"nets": ["10.0.0.0/8"]})),
     "spec.ingress[0].ipVersion", "IPv4"),
    ("entity selector", np(rule(source={"selector": "a in {"})), "spec.ingress[0].source.selector",
     "invalid selector"),
    ("entity selector global", np(rule(source={"selector": "global()"})),
     "spec.ingress[0].source.selector", "global()"),
    ("namespaceSelector global mix", np(rule(source={"namespaceSelector": "global() && a == 'b'"})),
     "spec.ingress[0].source.namespaceSelector", "cannot be combined"),
    ("misspelt entity field", np(rule(destination={"port": [80]})),
     "spec.ingress[0].destination.port", "did you mean 'ports'"),
    ("service with selector",
     np(egress=[rule(destination={"services": {"name": "s"}, "selector": "a == 'b'"})]),
     "spec.egress[0].destination.services", "selector"),
    ("service without name", np(egress=[rule(destination={"services": {"namespace": "n"}})]),
     "spec.egress[0].destination.services.name", "service name"),
    ("service with ports",
     np(egress=[rule(protocol="TCP", destination={"services": {"name": "s"}, "ports": [80]})]),
     "spec.egress[0].destination.ports", "service"),
    ("egress source service", np(egress=[rule(source={"services": {"name": "s"}})]),
     "spec.egress[0].source.services", "egress"),
    ("ingress destination service", np(rule(destination={"services": {"name": "s"}})),
     "spec.ingress[0].destination.services", "ingress"),
    ("http on deny", np({"action": "Deny", "http": {"methods": ["GET"]}}),
     "spec.ingress[0].http", "Allow"),
    ("http in egress", np(egress=[rule(http={"methods": ["GET"]})]), "spec.egress[0].http",
     "egress"),
    ("http with UDP", np(rule(protocol="UDP", http={"methods": ["GET"]})),
     "spec.ingress[0].protocol", "'UDP'"),
    ("http path", np(rule(http={"paths": [{"exact": "foo"}]})),
     "spec.ingress[0].http.paths[0].exact", "'foo'"),
    ("http duplicate method", np(rule(http={"methods": ["GET", "GET"]})),
     "spec.ingress[0].http.methods", "twice"),
    ("rule annotations", np(rule(metadata={"annotations": {"-x": "y"}})),
     "spec.ingress[0].metadata.annotations.-x", "'-x'"),
    # GlobalNetworkPolicy
    ("gnp name", mk("GlobalNetworkPolicy", {}, name="a.b.c"), "metadata.name", "'a.b.c'"),
    ("gnp namespaceSelector", gnp(namespaceSelector="global()"), "spec.namespaceSelector",
     "global()"),
    ("doNotTrack and preDNAT", gnp(doNotTrack=True, preDNAT=True, applyOnForward=True),
     "spec.preDNAT", "cannot both be true"),
    ("preDNAT without applyOnForward", gnp(preDNAT=True), "spec.applyOnForward", "must be true"),
    ("preDNAT with egress", gnp(preDNAT=True, applyOnForward=True, egress=[rule()]),
     "spec.egress", "egress rules"),
    ("preDNAT egress type", gnp(preDNAT=True, applyOnForward=True, types=["Egress"]),
     "spec.types", "Egress"),
    ("gnp service namespace", gnp(rule(source={"services": {"name": "s"}})),
     "spec.ingress[0].source.services.namespace", "namespace"),
]  # fmt: skip


@pytest.mark.parametrize(("resource", "field", "fragment"),
                         [pytest.param(r, f, m, id=i) for i, r, f, m in BAD])  # fmt: skip
def test_bad_resources_name_the_field_and_value(resource: Any, field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as e:
        validate(resource)
    assert e.value.field == field, str(e.value)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(e.value.resource or e.value.field)


def test_error_message_format() -> None:
    with pytest.raises(ValidationError) as e:
        validate(mk("IPPool", {"cidr": "10.0.0.0/16", "blockSize": 19}, name="default-ipv4-ippool"))
    assert str(e.value) == (
        "IPPool(default-ipv4-ippool) spec.blockSize: 19 is out of range 20-32 for an IPv4 pool"
    )
    assert e.value.resource == "IPPool(default-ipv4-ippool)"
    with pytest.raises(ValidationError) as e:
        validate(np({"action": "allow"}))
    assert e.value.resource == "NetworkPolicy(dev/p)"


GOOD: list[tuple[str, Any]] = [
    ("disabled pool smaller than a block", pool(cidr="10.0.0.0/28", disabled=True)),
    ("v6 pool", pool(cidr="fd00::/48", vxlanMode="Always")),
    ("block size bounds", pool(blockSize=20)),
    ("block size 32", pool(blockSize=32)),
    ("v6 block size bounds", pool(cidr="fd00::/48", blockSize=116)),
    ("LoadBalancer pool", pool(allowedUses=["LoadBalancer"])),
    ("pool selectors", pool(nodeSelector="zone == 'a'", namespaceSelector="has(x)")),
    ("node full", mk("Node", {"bgp": {"asNumber": "1.10", "ipv4Address": "10.0.0.1",
                                      "ipv6Address": "fd00::1/64"},
                              "orchRefs": [{"nodeName": "n", "orchestrator": "k8s"}],
                              "vxlanTunnelMACAddr": "66:cf:23:df:22:07",
                              "addresses": [{"address": "10.0.0.1", "type": "InternalIP"}]},
                     labels={"kubernetes.io/hostname": "n"})),
    ("peer by IP and port", mk("BGPPeer", {"peerIP": "[fd00::1]:179", "asNumber": 65000,
                                           "node": "n1", "nextHopMode": "Keep"})),
    ("peer reachableBy", mk("BGPPeer", {**PEER, "reachableBy": "10.0.0.254"})),
    ("peer local workload", mk("BGPPeer", {"localWorkloadSelector": "app == 'x'",
                                           "asNumber": 65000})),
    ("bgp config per node", mk("BGPConfiguration", {"asNumber": 65000}, name="node.n-1")),
    ("bgp config communities",
     mk("BGPConfiguration", {"communities": [{"name": "big", "value": "1:2:3"}],
                             "prefixAdvertisements": [{"cidr": "10.0.0.0/8",
                                                       "communities": ["big", "65000:1"]}]},
        name="default")),
    ("felix per node", mk("FelixConfiguration", {"ipipMTU": 1400, "logSeverityScreen": "debug",
                                                 "routeRefreshInterval": "1m30s"},
                          name="node.n1")),
    ("felix selector-scoped", mk("FelixConfiguration", {"nodeSelector": "zone == 'a'"},
                                 name="zone-a")),
    ("felix failsafe", mk("FelixConfiguration", {"failsafeInboundHostPorts": [
        {"protocol": "TCP", "port": 22}, {"protocol": "UDP", "port": 68, "net": "0.0.0.0/0"}]},
        name="default")),
    ("cluster info", mk("ClusterInformation", {"datastoreReady": True, "clusterGUID": "abc"},
                        name="default")),
    ("kcc", mk("KubeControllersConfiguration", {"controllers": {"node": {
        "reconcilerPeriod": "5m", "syncLabels": "Enabled"}}, "healthChecks": "Enabled"},
        name="default")),
    ("hep wildcard", mk("HostEndpoint", {"node": "n", "interfaceName": "*",
                                         "expectedIPs": ["10.0.0.1"],
                                         "ports": [{"name": "ssh", "protocol": "TCP",
                                                    "port": 22}]})),
    ("network set", mk("NetworkSet", {"nets": ["10.0.0.1", "10.1.0.0/16"]}, namespace="dev")),
    ("tier", mk("Tier", {"order": 100}, name="security")),
    ("default tier", mk("Tier", {"order": 1000000, "defaultAction": "Deny"}, name="default")),
    ("tiered policy without prefix", np(tier="security")),
    ("tier-prefixed policy", mk("NetworkPolicy", {"tier": "security"}, name="security.allow",
                                namespace="dev")),
    ("converted k8s policy name", mk("NetworkPolicy", {}, name="knp.default.allow.web",
                                     namespace="dev")),
    ("icmp", np(rule(protocol="ICMP", icmp={"type": 8, "code": 0}, ipVersion=4))),
    ("icmp by number", np(rule(protocol=58, icmp={"type": 128}))),
    ("global namespaceSelector", np(rule(source={"namespaceSelector": "global()"}))),
    ("services", np(egress=[rule(destination={"services": {"name": "s", "namespace": "n"}})])),
    ("service accounts",
     np(rule(source={"serviceAccounts": {"names": ["a"], "selector": "all()"}}))),
    ("http", np(rule(protocol="TCP", http={"methods": ["GET"], "paths": [{"prefix": "/api"}]}))),
    ("log and pass", np({"action": "Log"}, {"action": "Pass"})),
    ("gnp flags", gnp(rule(), doNotTrack=True, applyOnForward=True)),
    ("profile", mk("Profile", {"ingress": [{"action": "Allow"}],
                               "labelsToApply": {"pcns.projectcalico.org/name": "dev"}})),
]  # fmt: skip


@pytest.mark.parametrize("resource", [pytest.param(r, id=i) for i, r in GOOD])
def test_good_resources_validate_and_are_stable(resource: Any) -> None:
    before = copy.deepcopy(resource)
    out = validate(resource)
    assert resource == before  # the input is never modified
    assert validate(out) == out  # defaults applied once are a fixed point


def test_ippool_defaults() -> None:
    out = validate(pool())
    assert out["spec"] == {
        "cidr": "10.0.0.0/16",
        "blockSize": 26,
        "nodeSelector": "all()",
        "ipipMode": "Never",
        "vxlanMode": "Never",
        "allowedUses": ["Workload", "Tunnel"],
        "assignmentMode": "Automatic",
    }
    v6 = validate(pool(cidr="FD00:0:0::/48"))["spec"]
    assert (v6["blockSize"], v6["cidr"]) == (122, "fd00::/48")
    assert validate(pool(blockSize=0))["spec"]["blockSize"] == 26  # 0 means unset, as in Go


@pytest.mark.parametrize(
    ("ingress", "egress", "types"),
    [
        ([], None, ["Ingress"]),
        ([rule()], None, ["Ingress"]),
        ([], [rule()], ["Egress"]),
        ([rule()], [rule()], ["Ingress", "Egress"]),
    ],
)
def test_policy_types_default_as_calico_does(
    ingress: list[Any], egress: list[Any] | None, types: list[str]
) -> None:
    assert validate(np(*ingress, egress=egress))["spec"]["types"] == types
    explicit = validate(np(*ingress, egress=egress, types=["Egress"]))
    assert explicit["spec"]["types"] == ["Egress"]


def test_policy_tier_defaults_and_labels() -> None:
    out = validate(mk("NetworkPolicy", {}, name="p", namespace="dev", labels={"app": "x"}))
    assert out["spec"]["tier"] == "default"
    assert out["metadata"]["labels"] == {"app": "x", "projectcalico.org/tier": "default"}
    assert out["metadata"]["namespace"] == "dev"
    tiered = validate(gnp(tier="security"))
    assert tiered["metadata"]["labels"] == {"projectcalico.org/tier": "security"}


def test_namespaced_kinds_default_to_the_default_namespace() -> None:
    out = validate(mk("NetworkPolicy", {}, name="p"))
    assert out["metadata"]["namespace"] == "default"
    assert "namespace" not in validate(mk("Profile", {}, namespace=None))["metadata"]


def test_values_are_normalised_as_calico_stores_them() -> None:
    out = validate(np(rule(protocol="6", destination={"ports": ["80", "81:81", "90:99", "http"]},
                           source={"notPorts": [443]}),
                      order=100.0))  # fmt: skip
    r = out["spec"]["ingress"][0]
    assert r["protocol"] == 6
    assert r["destination"]["ports"] == [80, 81, "90:99", "http"]
    assert out["spec"]["order"] == 100 and isinstance(out["spec"]["order"], int)
    assert validate(np(order=1.5))["spec"]["order"] == 1.5
    peer = validate(mk("BGPPeer", {"peerIP": "10.0.0.1", "asNumber": "1.10"}))
    assert peer["spec"]["asNumber"] == 65546
    assert validate(mk("Node", {"bgp": {"asNumber": "64512"}}))["spec"]["bgp"]["asNumber"] == 64512


def test_rules_always_carry_source_and_destination_as_calico_stores_them() -> None:
    out = validate(np({"action": "Deny"}))
    assert out["spec"]["ingress"] == [{"action": "Deny", "source": {}, "destination": {}}]


def test_nulls_mean_unset() -> None:
    out = validate(pool(blockSize=None, natOutgoing=None))
    assert out["spec"]["blockSize"] == 26 and "natOutgoing" not in out["spec"]
    assert validate(mk("Profile", None))["spec"] == {}


def test_workload_endpoint_name_and_labels() -> None:
    out = validate(mk("WorkloadEndpoint", WEP_SPEC, name=None, namespace="dev"))
    assert out["metadata"]["name"] == WEP_NAME
    assert out["metadata"]["labels"] == {
        "projectcalico.org/namespace": "dev",
        "projectcalico.org/orchestrator": "k8s",
    }
    same = validate(mk("WorkloadEndpoint", WEP_SPEC, name=WEP_NAME, namespace="dev"))
    assert same == out
    cni = {**WEP_SPEC, "orchestrator": "cni", "containerID": "abc123", "pod": None}
    assert validate(mk("WorkloadEndpoint", cni, name=None))["metadata"]["name"] == (
        "node--1-cni-abc123-eth0"
    )


def test_tier_default_action() -> None:
    assert validate(mk("Tier", {}, name="t"))["spec"] == {"defaultAction": "Deny"}
    assert validate(mk("Tier", {"defaultAction": "Pass"}, name="t"))["spec"]["defaultAction"] == (
        "Pass"
    )


def test_non_mapping_input() -> None:
    with pytest.raises(ValidationError):
        validate([])  # type: ignore[arg-type]
