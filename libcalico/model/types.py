"""TypedDicts for the ``projectcalico.org/v3`` JSON shapes calico-py stores and serves.

Resources stay plain dicts end to end (etcd value, gRPC payload, calc graph input); these types
only tell readers and mypy which keys exist. Field names are Calico's JSON names. ``validate``
returns a :class:`Resource`; code that knows the kind casts ``resource["spec"]`` to the kind's
spec type.
"""

from __future__ import annotations

from typing import Any, Literal, Required, TypedDict

Port = int | str  # 80, "80:90" or a named port
Protocol = int | str  # "TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite" or 1-255
Action = Literal["Allow", "Deny", "Log", "Pass"]
PolicyType = Literal["Ingress", "Egress"]
EncapMode = Literal["Never", "Always", "CrossSubnet"]


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    resourceVersion: str  # the etcd mod revision, in decimal
    uid: str
    creationTimestamp: str
    generation: int


class Resource(TypedDict, total=False):
    apiVersion: Required[str]
    kind: Required[str]
    metadata: Required[ObjectMeta]
    spec: dict[str, Any]
    status: dict[str, Any]


# --- policy ----------------------------------------------------------------------------------


class ICMPFields(TypedDict, total=False):
    type: int
    code: int


class ServiceAccountMatch(TypedDict, total=False):
    names: list[str]
    selector: str


class ServiceMatch(TypedDict, total=False):
    name: str
    namespace: str


class EntityRule(TypedDict, total=False):
    nets: list[str]
    notNets: list[str]
    selector: str
    notSelector: str
    namespaceSelector: str
    ports: list[Port]
    notPorts: list[Port]
    serviceAccounts: ServiceAccountMatch
    services: ServiceMatch


class HTTPPath(TypedDict, total=False):
    exact: str
    prefix: str


class HTTPMatch(TypedDict, total=False):
    methods: list[str]
    paths: list[HTTPPath]


class RuleMetadata(TypedDict, total=False):
    annotations: dict[str, str]


class Rule(TypedDict, total=False):
    action: Required[Action]
    ipVersion: int
    protocol: Protocol
    notProtocol: Protocol
    icmp: ICMPFields
    notICMP: ICMPFields
    source: EntityRule
    destination: EntityRule
    http: HTTPMatch
    metadata: RuleMetadata


class NetworkPolicySpec(TypedDict, total=False):
    tier: str
    order: float
    selector: str
    serviceAccountSelector: str
    types: list[PolicyType]
    ingress: list[Rule]
    egress: list[Rule]
    performanceHints: list[str]


class GlobalNetworkPolicySpec(NetworkPolicySpec, total=False):
    namespaceSelector: str
    doNotTrack: bool
    preDNAT: bool
    applyOnForward: bool


class ProfileSpec(TypedDict, total=False):
    ingress: list[Rule]
    egress: list[Rule]
    labelsToApply: dict[str, str]


class TierSpec(TypedDict, total=False):
    order: float
    defaultAction: Literal["Deny", "Pass"]


class NetworkSetSpec(TypedDict, total=False):
    nets: list[str]


# --- networking ------------------------------------------------------------------------------


class IPPoolSpec(TypedDict, total=False):
    cidr: Required[str]
    blockSize: int
    ipipMode: EncapMode
    vxlanMode: EncapMode
    natOutgoing: bool
    disabled: bool
    disableBGPExport: bool
    nodeSelector: str
    namespaceSelector: str
    allowedUses: list[Literal["Workload", "Tunnel", "LoadBalancer"]]
    assignmentMode: Literal["Automatic", "Manual"]


class IPReservationSpec(TypedDict, total=False):
    reservedCIDRs: list[str]


class NodeBGPSpec(TypedDict, total=False):
    asNumber: int
    ipv4Address: str
    ipv6Address: str
    ipv4IPIPTunnelAddr: str
    routeReflectorClusterID: str


class OrchRef(TypedDict, total=False):
    nodeName: str
    orchestrator: str


class NodeAddress(TypedDict, total=False):
    address: str
    type: Literal["CalicoNodeIP", "InternalIP", "ExternalIP"]


class NodeWireguardSpec(TypedDict, total=False):
    interfaceIPv4Address: str
    interfaceIPv6Address: str


class NodeSpec(TypedDict, total=False):
    bgp: NodeBGPSpec
    ipv4VXLANTunnelAddr: str
    vxlanTunnelMACAddr: str
    ipv6VXLANTunnelAddr: str
    vxlanTunnelMACAddrV6: str
    orchRefs: list[OrchRef]
    wireguard: NodeWireguardSpec
    addresses: list[NodeAddress]


class IPNAT(TypedDict):
    internalIP: str
    externalIP: str


class WorkloadEndpointPort(TypedDict, total=False):
    name: str
    protocol: Protocol
    port: int
    hostPort: int
    hostIP: str


class WorkloadEndpointSpec(TypedDict, total=False):
    orchestrator: str
    workload: str
    node: str
    containerID: str
    pod: str
    endpoint: str
    serviceAccountName: str
    ipNetworks: list[str]
    ipNATs: list[IPNAT]
    ipv4Gateway: str
    ipv6Gateway: str
    profiles: list[str]
    interfaceName: str
    mac: str
    ports: list[WorkloadEndpointPort]
    allowSpoofedSourcePrefixes: list[str]
    qosControls: dict[str, int]


class EndpointPort(TypedDict):
    name: str
    protocol: Protocol
    port: int


class HostEndpointSpec(TypedDict, total=False):
    node: str
    interfaceName: str
    expectedIPs: list[str]
    profiles: list[str]
    ports: list[EndpointPort]


class SecretKeyRef(TypedDict, total=False):
    name: str
    key: str
    optional: bool


class BGPPassword(TypedDict, total=False):
    secretKeyRef: SecretKeyRef


class BGPPeerSpec(TypedDict, total=False):
    node: str
    nodeSelector: str
    peerIP: str
    asNumber: int
    peerSelector: str
    localWorkloadSelector: str
    localASNumber: int
    keepOriginalNextHop: bool
    nextHopMode: Literal["Auto", "Self", "Keep"]
    password: BGPPassword
    sourceAddress: Literal["UseNodeIP", "None"]
    maxRestartTime: str
    keepaliveTime: str
    numAllowedLocalASNumbers: int
    ttlSecurity: int
    reachableBy: str
    filters: list[str]
    reversePeering: Literal["Auto", "Manual"]


class ServiceCIDR(TypedDict):
    cidr: str


class Community(TypedDict, total=False):
    name: str
    value: str


class PrefixAdvertisement(TypedDict, total=False):
    cidr: str
    communities: list[str]


class BGPConfigurationSpec(TypedDict, total=False):
    logSeverityScreen: str
    nodeToNodeMeshEnabled: bool
    asNumber: int
    serviceClusterIPs: list[ServiceCIDR]
    serviceExternalIPs: list[ServiceCIDR]
    serviceLoadBalancerIPs: list[ServiceCIDR]
    communities: list[Community]
    prefixAdvertisements: list[PrefixAdvertisement]
    listenPort: int
    nodeMeshPassword: BGPPassword
    nodeMeshMaxRestartTime: str
    bindMode: Literal["None", "NodeIP"]
    ignoredInterfaces: list[str]
    localWorkloadPeeringIPV4: str
    localWorkloadPeeringIPV6: str
    programClusterRoutes: Literal["Enabled", "Disabled"]
    serviceLoadBalancerAggregation: Literal["Enabled", "Disabled"]


# --- configuration ---------------------------------------------------------------------------

# FelixConfiguration has ~200 optional fields; validate_config.FELIX_FIELDS lists them.
FelixConfigurationSpec = dict[str, Any]


class ClusterInformationSpec(TypedDict, total=False):
    clusterGUID: str
    clusterType: str
    calicoVersion: str
    datastoreReady: bool
    variant: str


class KubeControllersConfigurationSpec(TypedDict, total=False):
    logSeverityScreen: str
    healthChecks: Literal["Enabled", "Disabled"]
    etcdV3CompactionPeriod: str
    prometheusMetricsPort: int
    debugProfilePort: int
    controllers: dict[str, Any]
