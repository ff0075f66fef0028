"""The truth-table layout (namespaces x, y, z with pods a, b, c) and the scenarios run on it.

Modelled on the Kubernetes network-policy e2e suite (``test/e2e/network/netpol``): namespaces
labelled ``ns: <name>`` and ``kubernetes.io/metadata.name: <name>``, pods labelled ``pod: <name>``,
every pod serving TCP 80 and 81 and UDP 80 (and 81) with named ports ``serve-<port>-<proto>``.
Pods ``a`` and ``b`` of each namespace run on node-1 and pod ``c`` on node-2, so a third of the
pairs cross the VXLAN tunnel.

A scenario is a list of steps; each step changes the world (``Apply`` a resource, ``Delete`` one,
relabel a pod or a namespace) and is followed by a full probe compared against the oracle.
Kubernetes policies are written as the user's ``networking.k8s.io/v1`` objects; the harness
converts them the way Calico does, the oracle reads them as Kubernetes defines them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .oracle import CALICO_API, K8S_API, Pod, World

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")


@dataclass(frozen=True)
class NodeSpec:
    ip: str  # underlay address
    block: str  # IPAM block (affine to the node)
    tunnel: str  # VXLAN tunnel address


NODES = {
    "node-1": NodeSpec("10.93.0.1", "10.244.1.0/26", "10.244.1.0"),
    "node-2": NodeSpec("10.93.0.2", "10.244.2.0/26", "10.244.2.0"),
}
UNDERLAY = "10.93.0.0/24"
POOL = "10.244.0.0/16"
POD_NODE = {"a": "node-1", "b": "node-1", "c": "node-2"}
POD_IPS = {
    "x/a": "10.244.1.10", "x/b": "10.244.1.11", "x/c": "10.244.2.10",
    "y/a": "10.244.1.20", "y/b": "10.244.1.21", "y/c": "10.244.2.20",
    "z/a": "10.244.1.30", "z/b": "10.244.1.31", "z/c": "10.244.2.30",
}
NAMED_PORTS = (
    ("serve-80-tcp", "TCP", 80), ("serve-81-tcp", "TCP", 81),
    ("serve-80-udp", "UDP", 80), ("serve-81-udp", "UDP", 81),
)
# One name that resolves differently per pod: "web" is TCP 80 on pods a and b, TCP 81 on c.
WEB_PORT = {"a": 80, "b": 80, "c": 81}
# Pods b run as service account "sa-b", the others as "default".
SERVICE_ACCOUNT = {"a": "default", "b": "sa-b", "c": "default"}
POD_KEYS = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in POD_NAMES)


def base_world() -> World:
    return World(
        namespaces={ns: {"ns": ns, "kubernetes.io/metadata.name": ns} for ns in NAMESPACES},
        pods={
            key: Pod(namespace=key[0], name=key[2], labels={"pod": key[2]}, ip=POD_IPS[key],
                     node=POD_NODE[key[2]],
                     ports=(*NAMED_PORTS, ("web", "TCP", WEB_PORT[key[2]])),
                     service_account=SERVICE_ACCOUNT[key[2]])
            for key in POD_KEYS
        },
    )


def ip32(pod: str) -> str:
    return f"{POD_IPS[pod]}/32"


# -- operations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Apply:
    resource: Mapping[str, Any]


@dataclass(frozen=True)
class Delete:
    kind: str  # "K8sNetworkPolicy" for a networking.k8s.io policy
    name: str
    namespace: str = ""


@dataclass(frozen=True)
class LabelPod:
    pod: str
    labels: Mapping[str, str]  # the pod's complete new label set


@dataclass(frozen=True)
class LabelNamespace:
    namespace: str
    labels: Mapping[str, str]  # the namespace's complete new label set


Op = Apply | Delete | LabelPod | LabelNamespace


def apply_op(world: World, op: Op) -> None:
    match op:
        case Apply(resource=r):
            world.apply(r)
        case Delete(kind=kind, name=name, namespace=ns):
            world.delete(kind, name, ns)
        case LabelPod(pod=pod, labels=labels):
            world.pods[pod].labels = dict(labels)
        case LabelNamespace(namespace=ns, labels=labels):
            world.namespaces[ns] = dict(labels)


@dataclass(frozen=True)
class Step:
    ops: tuple[Op, ...]
    note: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    steps: tuple[Step, ...]
    xfail: str = ""  # reason, when the scenario shows a known bug (strict xfail)


# -- resource builders ----------------------------------------------------------------------


def knp(ns: str, name: str, spec: dict[str, Any]) -> Apply:
    return Apply({"apiVersion": K8S_API, "kind": "NetworkPolicy",
                  "metadata": {"name": name, "namespace": ns}, "spec": spec})


def _calico(kind: str, name: str, spec: dict[str, Any], ns: str = "",
            labels: Mapping[str, str] | None = None) -> Apply:
    md: dict[str, Any] = {"name": name}
    if ns:
        md["namespace"] = ns
    if labels:
        md["labels"] = dict(labels)
    return Apply({"apiVersion": CALICO_API, "kind": kind, "metadata": md, "spec": spec})


def np(ns: str, name: str, spec: dict[str, Any]) -> Apply:
    return _calico("NetworkPolicy", name, spec, ns)


def gnp(name: str, spec: dict[str, Any]) -> Apply:
    return _calico("GlobalNetworkPolicy", name, spec)


def netset(ns: str, name: str, nets: Sequence[str], labels: Mapping[str, str]) -> Apply:
    return _calico("NetworkSet", name, {"nets": list(nets)}, ns, labels)


def gnetset(name: str, nets: Sequence[str], labels: Mapping[str, str]) -> Apply:
    return _calico("GlobalNetworkSet", name, {"nets": list(nets)}, "", labels)


def tier(name: str, order: float, default_action: str = "Deny") -> Apply:
    return _calico("Tier", name, {"order": order, "defaultAction": default_action})


def labels(**kv: str) -> dict[str, Any]:
    return {"matchLabels": kv}


def step(*ops: Op, note: str = "") -> Step:
    return Step(tuple(ops), note)


def scenario(name: str, doc: str, *steps: Step, xfail: str = "") -> Scenario:
    return Scenario(name, doc, tuple(steps) or (step(),), xfail)


ALL: dict[str, Any] = {}
ALLOW: dict[str, Any] = {"action": "Allow"}
NS_LABELS = {ns: {"ns": ns, "kubernetes.io/metadata.name": ns} for ns in NAMESPACES}

# -- the scenarios --------------------------------------------------------------------------

SCENARIOS: tuple[Scenario, ...] = (
    # Kubernetes NetworkPolicy (converted as Calico converts a user's policy).
    scenario("no-policy", "no policy at all: the kns profiles allow everything"),
    scenario("k8s-default-deny-ingress", "x denies all ingress", step(
        knp("x", "deny-ingress", {"podSelector": ALL, "policyTypes": ["Ingress"]}))),
    scenario("k8s-default-deny-egress", "x denies all egress", step(
        knp("x", "deny-egress", {"podSelector": ALL, "policyTypes": ["Egress"]}))),
    scenario("k8s-default-deny-both", "y denies all ingress and egress", step(
        knp("y", "deny-all", {"podSelector": ALL, "policyTypes": ["Ingress", "Egress"]}))),
    scenario("k8s-allow-from-pod-selector", "x/a only from pods b of x", step(
        knp("x", "allow-b", {"podSelector": labels(pod="a"),
                             "ingress": [{"from": [{"podSelector": labels(pod="b")}]}]}))),
    scenario("k8s-allow-from-namespace-selector", "x/a only from namespace y", step(
        knp("x", "allow-ns-y", {"podSelector": labels(pod="a"),
                                "ingress": [{"from": [{"namespaceSelector": labels(ns="y")}]}]}))),
    scenario("k8s-pod-and-namespace-selector", "one peer: pods b in namespaces y or z (AND)", step(
        knp("x", "and", {"podSelector": ALL, "ingress": [{"from": [{
            "namespaceSelector": {"matchExpressions": [
                {"key": "ns", "operator": "In", "values": ["y", "z"]}]},
            "podSelector": labels(pod="b")}]}]}))),
    scenario("k8s-pod-or-namespace-selector", "two peers: namespace y, or pods b of x (OR)", step(
        knp("x", "or", {"podSelector": ALL, "ingress": [{"from": [
            {"namespaceSelector": labels(ns="y")}, {"podSelector": labels(pod="b")}]}]}))),
    scenario("k8s-namespace-match-expressions", "x from every namespace but x (NotIn)", step(
        knp("x", "not-x", {"podSelector": ALL, "ingress": [{"from": [{"namespaceSelector": {
            "matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]}}]}]}))),
    scenario("k8s-pod-match-expressions",
             "z/a and z/b from pods other than a, any namespace (In, NotIn)", step(
        knp("z", "expr", {"podSelector": {"matchExpressions": [
            {"key": "pod", "operator": "In", "values": ["a", "b"]}]},
            "ingress": [{"from": [{"namespaceSelector": ALL, "podSelector": {"matchExpressions": [
                {"key": "pod", "operator": "NotIn", "values": ["a"]}]}}]}]}))),
    scenario("k8s-ipblock-except", "x from 10.244/16 except node-2's block and y/a", step(
        knp("x", "ipblock", {"podSelector": ALL, "ingress": [{"from": [{"ipBlock": {
            "cidr": POOL, "except": [NODES["node-2"].block, ip32("y/a")]}}]}]}))),
    scenario("k8s-egress-ipblock", "y only to node-1's pods, except x/b", step(
        knp("y", "egress-ipblock", {"podSelector": ALL, "policyTypes": ["Egress"], "egress": [
            {"to": [{"ipBlock": {"cidr": "10.244.1.0/24", "except": [ip32("x/b")]}}]}]}))),
    scenario("k8s-ingress-port", "z only on TCP 80", step(
        knp("z", "port-80", {"podSelector": ALL, "ingress": [{"ports": [{"port": 80}]}]}))),
    scenario("k8s-ingress-udp-only", "x/a only UDP, any port", step(
        knp("x", "udp", {"podSelector": labels(pod="a"),
                         "ingress": [{"ports": [{"protocol": "UDP"}]}]}))),
    scenario("k8s-named-port-tcp", "y only on the port named serve-81-tcp", step(
        knp("y", "named-81", {"podSelector": ALL,
                              "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}))),
    scenario("k8s-named-port-udp", "z only on UDP serve-80-udp", step(
        knp("z", "named-udp", {"podSelector": ALL, "ingress": [
            {"ports": [{"protocol": "UDP", "port": "serve-80-udp"}]}]}))),
    scenario("k8s-endport", "x/a TCP 80-81, x/b TCP 81-90, x/c UDP 70-90", step(
        knp("x", "range-a", {"podSelector": labels(pod="a"),
                             "ingress": [{"ports": [{"port": 80, "endPort": 81}]}]}),
        knp("x", "range-b", {"podSelector": labels(pod="b"),
                             "ingress": [{"ports": [{"port": 81, "endPort": 90}]}]}),
        knp("x", "range-c", {"podSelector": labels(pod="c"), "ingress": [
            {"ports": [{"protocol": "UDP", "port": 70, "endPort": 90}]}]}))),
    scenario("k8s-egress-named-port", "x may only send to ports named serve-80-tcp", step(
        knp("x", "egress-named", {"podSelector": ALL, "policyTypes": ["Egress"],
                                  "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}))),
    scenario("k8s-egress-namespace-and-port", "y only to namespace z on TCP 81", step(
        knp("y", "to-z-81", {"podSelector": ALL, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": labels(ns="z")}], "ports": [{"port": 81}]}]}))),
    scenario("k8s-union-of-policies", "x/a from x/b (one policy) and from z (another)", step(
        knp("x", "from-b", {"podSelector": labels(pod="a"),
                            "ingress": [{"from": [{"podSelector": labels(pod="b")}]}]}),
        knp("x", "from-z", {"podSelector": labels(pod="a"),
                            "ingress": [{"from": [{"namespaceSelector": labels(ns="z")}]}]}))),
    scenario("k8s-allow-all-beside-deny", "x denies all ingress; a second policy allows all to "
             "x/a (policies add up)", step(
        knp("x", "deny", {"podSelector": ALL, "policyTypes": ["Ingress"]}),
        knp("x", "allow-all", {"podSelector": labels(pod="a"), "ingress": [{}]}))),
    scenario("k8s-ingress-and-egress", "y egresses only to x; x/a accepts only from y", step(
        knp("y", "to-x", {"podSelector": ALL, "policyTypes": ["Egress"],
                          "egress": [{"to": [{"namespaceSelector": labels(ns="x")}]}]}),
        knp("x", "from-y", {"podSelector": labels(pod="a"),
                            "ingress": [{"from": [{"namespaceSelector": labels(ns="y")}]}]}))),
    scenario(
        "k8s-policy-update", "x/a from pods b, then the same policy from pods c",
        step(knp("x", "allow", {"podSelector": labels(pod="a"), "ingress": [{"from": [
            {"namespaceSelector": ALL, "podSelector": labels(pod="b")}]}]})),
        step(knp("x", "allow", {"podSelector": labels(pod="a"), "ingress": [{"from": [
            {"namespaceSelector": ALL, "podSelector": labels(pod="c")}]}]}),
            note="selector changed to pod=c"),
    ),
    scenario(
        "k8s-peer-pod-label-change", "x from role=client pods; y/b gains, then loses the label",
        step(knp("x", "clients", {"podSelector": ALL, "ingress": [{"from": [
            {"namespaceSelector": ALL, "podSelector": labels(role="client")}]}]})),
        step(LabelPod("y/b", {"pod": "b", "role": "client"}), note="y/b labelled role=client"),
        step(LabelPod("y/b", {"pod": "b"}), note="label removed again"),
    ),
    scenario(
        "k8s-target-pod-label-change", "z pods labelled isolated=true deny ingress; z/b labelled",
        step(knp("z", "isolate", {"podSelector": labels(isolated="true"),
                                  "policyTypes": ["Ingress"]})),
        step(LabelPod("z/b", {"pod": "b", "isolated": "true"}), note="z/b labelled"),
    ),
    scenario(
        "k8s-namespace-label-change", "x from namespaces team=blue; y gains the label",
        step(knp("x", "blue", {"podSelector": ALL, "ingress": [
            {"from": [{"namespaceSelector": labels(team="blue")}]}]})),
        step(LabelNamespace("y", {**NS_LABELS["y"], "team": "blue"}), note="y labelled team=blue"),
    ),
    scenario(
        "k8s-policy-delete", "z isolated both ways, then the policy is deleted",
        step(knp("z", "deny-all", {"podSelector": ALL, "policyTypes": ["Ingress", "Egress"]})),
        step(Delete("K8sNetworkPolicy", "deny-all", "z"), note="policy deleted"),
    ),
    scenario(
        "k8s-egress-without-policy-types", "x: egress rules only, policyTypes left out", step(
            knp("x", "egress-only", {"podSelector": ALL, "egress": [
                {"to": [{"namespaceSelector": labels(ns="y")}]}]})),
    ),
    # Calico policy.
    scenario(
        "calico-order", "x: Deny from y at order 10 before Allow at 20; then Deny moved to 30",
        step(np("x", "deny-y", {"order": 10, "selector": "all()", "ingress": [
                 {"action": "Deny", "source": {"namespaceSelector": "ns == 'y'"}}]}),
             np("x", "allow", {"order": 20, "selector": "all()", "ingress": [ALLOW]})),
        step(np("x", "deny-y", {"order": 30, "selector": "all()", "ingress": [
                 {"action": "Deny", "source": {"namespaceSelector": "ns == 'y'"}}]}),
             note="deny-y now after allow"),
    ),
    scenario("calico-deny-before-allow", "z: rule Deny pods a (any namespace), then Allow", step(
        gnp("z-deny-a", {"selector": "projectcalico.org/namespace == 'z'", "ingress": [
            {"action": "Deny", "source": {"selector": "pod == 'a'"}}, ALLOW]}))),
    scenario("calico-pass-to-default-tier",
             "tier security: Deny from z, Pass the rest; default tier: x only from x", step(
        tier("security", 100),
        gnp("security.pass", {"tier": "security", "order": 1, "selector": "all()",
                              "types": ["Ingress", "Egress"], "ingress": [
                                  {"action": "Deny", "source": {"namespaceSelector": "ns == 'z'"}},
                                  {"action": "Pass"}], "egress": [{"action": "Pass"}]}),
        knp("x", "same-ns", {"podSelector": ALL, "ingress": [{"from": [{"podSelector": ALL}]}]}))),
    scenario("calico-end-of-tier-deny",
             "tier platform (Deny): y allows TCP only, the rest hits the end of the tier", step(
        tier("platform", 200),
        gnp("platform.y-tcp", {"tier": "platform", "selector": "projectcalico.org/namespace == 'y'",
                               "ingress": [{"action": "Allow", "protocol": "TCP"}]}))),
    scenario("calico-tier-default-pass",
             "tier audit (defaultAction Pass) denies pods c; unmatched traffic passes on", step(
        tier("audit", 50, "Pass"),
        gnp("audit.no-c", {"tier": "audit", "selector": "all()", "ingress": [
            {"action": "Deny", "source": {"selector": "pod == 'c'"}}]}))),
    scenario("calico-gnp-egress", "GNP: y may not send TCP 81 anywhere", step(
        gnp("y-no-81", {"selector": "projectcalico.org/namespace == 'y'", "types": ["Egress"],
                        "egress": [{"action": "Deny", "protocol": "TCP",
                                    "destination": {"ports": [81]}}, ALLOW]}))),
    scenario("calico-gnp-namespace-selector", "GNP on namespace z: only from namespace x", step(
        gnp("z-from-x", {"namespaceSelector": "ns == 'z'", "selector": "all()", "ingress": [
            {"action": "Allow", "source": {"namespaceSelector": "ns == 'x'"}}]}))),
    scenario("calico-networkset-source", "x only from a NetworkSet holding y/a and z/b", step(
        netset("x", "trusted", [ip32("y/a"), ip32("z/b")], {"role": "trusted"}),
        np("x", "from-trusted", {"selector": "all()", "ingress": [
            {"action": "Allow", "source": {"selector": "role == 'trusted'"}}]}))),
    scenario("calico-globalnetworkset-source", "GNP denies a GlobalNetworkSet (x/b, y/c)", step(
        gnetset("bad", [ip32("x/b"), ip32("y/c")], {"feed": "bad"}),
        gnp("deny-bad", {"selector": "all()", "ingress": [
            {"action": "Deny", "source": {"selector": "feed == 'bad'"}}, ALLOW]}))),
    scenario("calico-global-namespace-selector",
             "z denies sources in global() sets labelled feed=bad (z/a); a namespaced set with "
             "the same label (x/b) is not global()", step(
        gnetset("bad", [ip32("z/a")], {"feed": "bad"}),
        netset("x", "not-global", [ip32("x/b")], {"feed": "bad"}),
        np("z", "deny-global", {"selector": "all()", "ingress": [
            {"action": "Deny", "source": {"namespaceSelector": "global()",
                                          "selector": "feed == 'bad'"}}, ALLOW]}))),
    scenario("calico-notnets", "y from everything but x/a and node-2's block", step(
        np("y", "not-nets", {"selector": "all()", "ingress": [
            {"action": "Allow", "source": {"notNets": [ip32("x/a"), NODES["node-2"].block]}}]}))),
    scenario("calico-notports", "x: TCP except port 81", step(
        np("x", "not-81", {"selector": "all()", "ingress": [
            {"action": "Allow", "protocol": "TCP", "destination": {"notPorts": [81]}}]}))),
    scenario("calico-icmp-type",
             "z/a: ICMP type 8 code 0 and TCP 81; z/b: ICMP type 0 only; z/c: ICMP not type 8",
             step(
        np("z", "icmp-a", {"selector": "pod == 'a'", "ingress": [
            {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": [81]}}]}),
        np("z", "icmp-b", {"selector": "pod == 'b'", "ingress": [
            {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 0}}]}),
        np("z", "icmp-c", {"selector": "pod == 'c'", "ingress": [
            {"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 8}}]}))),
    scenario("calico-not-protocol", "y/b: everything but UDP; y/c: protocol 17 only", step(
        np("y", "not-udp", {"selector": "pod == 'b'", "ingress": [
            {"action": "Allow", "notProtocol": "UDP"}]}),
        np("y", "udp-number", {"selector": "pod == 'c'", "ingress": [
            {"action": "Allow", "protocol": 17}]}))),
    scenario("calico-log-action", "Log rules around a Deny from y: same verdicts as without", step(
        np("x", "logged", {"selector": "all()", "types": ["Ingress", "Egress"], "ingress": [
            {"action": "Log"},
            {"action": "Deny", "source": {"namespaceSelector": "ns == 'y'"}},
            {"action": "Log", "protocol": "TCP"}, ALLOW],
            "egress": [{"action": "Log", "protocol": "UDP"}, ALLOW]}),
        np("z", "log-only", {"selector": "pod == 'a'", "types": ["Egress"],
                             "egress": [{"action": "Log"}]}))),
    scenario("calico-notselector", "y from pods of y that are not a", step(
        np("y", "not-a", {"selector": "all()", "ingress": [
            {"action": "Allow", "source": {"notSelector": "pod == 'a'"}}]}))),
    scenario("calico-egress-destination-selector", "x sends only to pods c of any namespace", step(
        np("x", "to-c", {"selector": "all()", "types": ["Egress"], "egress": [
            {"action": "Allow", "destination": {"selector": "pod == 'c'",
                                                "namespaceSelector": "all()"}}]}))),
    scenario("calico-egress-port-range", "z may not send UDP to ports 1-100", step(
        np("z", "no-udp", {"selector": "all()", "types": ["Egress"], "egress": [
            {"action": "Deny", "protocol": "UDP", "destination": {"ports": ["1:100"]}},
            ALLOW]}))),
    scenario("k8s-named-port-per-pod", "x may only send to the port each peer names web "
             "(TCP 80 on a and b, TCP 81 on c)", step(
        knp("x", "egress-web", {"podSelector": ALL, "policyTypes": ["Egress"],
                                "egress": [{"ports": [{"port": "web"}]}]}))),
    scenario("k8s-several-ports-and-protocols", "z on TCP 81 and UDP 80", step(
        knp("z", "mixed", {"podSelector": ALL, "ingress": [
            {"ports": [{"port": 81}, {"protocol": "UDP", "port": 80}]}]}))),
    scenario("k8s-egress-ipblock-and-port", "y to node-2's pods on TCP 81 only", step(
        knp("y", "to-c-81", {"podSelector": ALL, "policyTypes": ["Egress"], "egress": [
            {"to": [{"ipBlock": {"cidr": "10.244.2.0/24"}}], "ports": [{"port": 81}]}]}))),
    scenario(
        "k8s-policy-pod-selector-update", "x isolates pods a, then pods b instead",
        step(knp("x", "isolate", {"podSelector": labels(pod="a"), "policyTypes": ["Ingress"]})),
        step(knp("x", "isolate", {"podSelector": labels(pod="b"), "policyTypes": ["Ingress"]}),
             note="podSelector changed to pod=b"),
    ),
    scenario("calico-named-port-per-pod", "y on the port each pod names web", step(
        np("y", "web", {"selector": "all()", "ingress": [
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["web"]}}]}))),
    scenario("calico-named-and-numeric-ports",
             "z: TCP [79, serve-81-tcp] and UDP [serve-80-udp, 5000] in the same rules", step(
        np("z", "mixed", {"selector": "all()", "ingress": [
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": [79, "serve-81-tcp"]}},
            {"action": "Allow", "protocol": "UDP",
             "destination": {"ports": ["serve-80-udp", 5000]}}]}))),
    scenario(
        "calico-egress-named-port-selector",
        "x sends only to pods c (or role=web) on serve-81-tcp; then y/b gets role=web",
        step(np("x", "to-c-81", {"selector": "all()", "types": ["Egress"], "egress": [
            {"action": "Allow", "protocol": "TCP", "destination": {
                "selector": "pod == 'c' || role == 'web'", "namespaceSelector": "all()",
                "ports": ["serve-81-tcp"]}}]})),
        step(LabelPod("y/b", {"pod": "b", "role": "web"}), note="y/b labelled role=web"),
    ),
    scenario(
        "calico-same-order-by-name", "equal orders sort by name: a-deny-y before b-allow, "
        "then 0-allow before both",
        step(np("x", "a-deny-y", {"order": 10, "selector": "all()", "ingress": [
                 {"action": "Deny", "source": {"namespaceSelector": "ns == 'y'"}}]}),
             np("x", "b-allow", {"order": 10, "selector": "all()", "ingress": [ALLOW]})),
        step(np("x", "0-allow", {"order": 10, "selector": "all()", "ingress": [ALLOW]}),
             note="0-allow added"),
    ),
    scenario(
        "calico-no-order-is-last", "an order-less Deny sorts after order 100",
        step(np("y", "allow-x", {"order": 100, "selector": "all()", "ingress": [
                 {"action": "Allow", "source": {"namespaceSelector": "ns == 'x'"}}]}),
             np("y", "deny-rest", {"selector": "all()", "ingress": [{"action": "Deny"}]})),
        step(np("y", "deny-rest", {"order": 50, "selector": "all()",
                                   "ingress": [{"action": "Deny"}]}),
             note="deny-rest now at order 50"),
    ),
    scenario("calico-pass-in-last-tier", "x: Pass from y (to the profiles), nothing else", step(
        np("x", "pass-y", {"selector": "all()", "ingress": [
            {"action": "Pass", "source": {"namespaceSelector": "ns == 'y'"}}]}))),
    scenario(
        "calico-tier-order-change",
        "tier allow-x (Pass) allows x into z; tier deny-x (Pass) denies it; then the tiers swap",
        step(tier("allow-x", 10, "Pass"), tier("deny-x", 20, "Pass"),
             gnp("allow-x.z", {"tier": "allow-x", "selector": "projectcalico.org/namespace == 'z'",
                               "ingress": [{"action": "Allow", "source": {
                                   "selector": "projectcalico.org/namespace == 'x'"}}]}),
             gnp("deny-x.z", {"tier": "deny-x", "selector": "projectcalico.org/namespace == 'z'",
                              "ingress": [{"action": "Deny", "source": {
                                  "selector": "projectcalico.org/namespace == 'x'"}}]})),
        step(tier("allow-x", 30, "Pass"), note="allow-x now after deny-x"),
    ),
    scenario("calico-selector-operators",
             "y's pods a, c from pods other than b in namespaces starting with x or ending with z",
             step(
        np("y", "ops", {"selector": "pod in {'a', 'c'}", "ingress": [
            {"action": "Allow", "source": {
                "selector": "has(pod) && pod != 'b'",
                "namespaceSelector": "ns starts with 'x' || ns ends with 'z'"}}]}))),
    scenario("calico-source-and-destination", "into x/b only, from pods a of any namespace", step(
        np("x", "a-to-b", {"selector": "all()", "ingress": [
            {"action": "Allow",
             "source": {"selector": "pod == 'a'", "namespaceSelector": "all()"},
             "destination": {"selector": "pod == 'b'"}}]}))),
    scenario(
        "calico-networkset-update", "z from a NetworkSet: x/a, then x/b and y/c, then relabelled",
        step(netset("z", "ok", [ip32("x/a")], {"role": "ok"}),
             np("z", "from-ok", {"selector": "all()", "ingress": [
                 {"action": "Allow", "source": {"selector": "role == 'ok'"}}]})),
        step(netset("z", "ok", [ip32("x/b"), ip32("y/c")], {"role": "ok"}),
             note="nets now x/b and y/c"),
        step(netset("z", "ok", [ip32("x/b"), ip32("y/c")], {"role": "other"}),
             note="set relabelled role=other"),
    ),
    scenario(
        "calico-globalnetworkset-delete", "y denies node-2's /24 by a GlobalNetworkSet; deleted",
        step(gnetset("node-2-pods", ["10.244.2.0/24"], {"where": "node-2"}),
             np("y", "deny-node-2", {"selector": "all()", "ingress": [
                 {"action": "Deny", "source": {"namespaceSelector": "global()",
                                               "selector": "where == 'node-2'"}}, ALLOW]})),
        step(Delete("GlobalNetworkSet", "node-2-pods"), note="set deleted"),
    ),
    scenario(
        "calico-shared-selector-delete",
        "x and y both allow only pods b; x's policy is deleted, y's keeps working",
        step(np("x", "from-b", {"selector": "all()", "ingress": [
                 {"action": "Allow", "source": {"selector": "pod == 'b'",
                                                "namespaceSelector": "all()"}}]}),
             np("y", "from-b", {"selector": "all()", "ingress": [
                 {"action": "Allow", "source": {"selector": "pod == 'b'",
                                                "namespaceSelector": "all()"}}]})),
        step(Delete("NetworkPolicy", "from-b", "x"), note="x's policy deleted"),
    ),
    scenario("calico-icmp-deny", "y: ICMP 8/1 allowed (never matches), ICMP denied, rest allowed",
             step(
        np("y", "no-ping", {"selector": "all()", "ingress": [
            {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 1}},
            {"action": "Deny", "protocol": "ICMP"}, ALLOW]}))),
    scenario("calico-service-accounts", "z only from service account sa-b, any namespace", step(
        np("z", "from-sa-b", {"selector": "all()", "ingress": [
            {"action": "Allow", "source": {"serviceAccounts": {"names": ["sa-b"]},
                                           "namespaceSelector": "all()"}}]}))),
    scenario("k8s-namespace-by-name-label", "x/a from namespace z, chosen by "
             "kubernetes.io/metadata.name; pods with a domain-prefixed label", step(
        LabelPod("y/a", {"pod": "a", "app.kubernetes.io/name": "web"}),
        knp("y", "web", {"podSelector": labels(**{"app.kubernetes.io/name": "web"}),
                         "ingress": [{"from": [{"namespaceSelector": labels(
                             **{"kubernetes.io/metadata.name": "z"})}]}]}))),
    scenario("k8s-exists-and-does-not-exist", "x pods with a role label accept only pods "
             "without one (any namespace); x/b and y/c get roles", step(
        LabelPod("x/b", {"pod": "b", "role": "db"}),
        LabelPod("y/c", {"pod": "c", "role": "cache"}),
        knp("x", "roles", {"podSelector": {"matchExpressions": [
            {"key": "role", "operator": "Exists"}]}, "ingress": [{"from": [
                {"namespaceSelector": ALL, "podSelector": {"matchExpressions": [
                    {"key": "role", "operator": "DoesNotExist"}]}}]}]}))),
    scenario("k8s-empty-peers-and-ports", "y: egress to: [] on ports [] allows everything; "
             "ingress from: [] only on UDP", step(
        knp("y", "empty", {"podSelector": ALL, "policyTypes": ["Ingress", "Egress"],
                           "ingress": [{"from": [], "ports": [{"protocol": "UDP"}]}],
                           "egress": [{"to": [], "ports": []}]}))),
    scenario("calico-types-limit-directions",
             "x: types [Ingress] with egress rules (ignored); y: types [Egress] with ingress "
             "rules (ignored)", step(
        np("x", "ingress-only", {"selector": "all()", "types": ["Ingress"],
                                 "ingress": [{"action": "Deny", "source": {
                                     "namespaceSelector": "ns == 'z'"}}, ALLOW],
                                 "egress": [{"action": "Deny"}]}),
        np("y", "egress-only", {"selector": "all()", "types": ["Egress"],
                                "ingress": [{"action": "Deny"}],
                                "egress": [{"action": "Deny", "protocol": "UDP"}, ALLOW]}))),
    scenario("calico-many-ports", "x: TCP to 20 scattered ports and 80; y: TCP except 20 "
             "scattered ports and 81 (more than one multiport can hold)", step(
        np("x", "many", {"selector": "all()", "ingress": [
            {"action": "Allow", "protocol": "TCP",
             "destination": {"ports": [*range(1, 40, 2), 80]}}]}),
        np("y", "many-not", {"selector": "all()", "ingress": [
            {"action": "Allow", "protocol": "TCP",
             "destination": {"notPorts": [*range(1, 40, 2), "81"]}}]}))),
    scenario("calico-many-nets", "z from 20 other /32s plus x/a and y/b; x from all but 20 "
             "other /32s and z/c", step(
        np("z", "many-nets", {"selector": "all()", "ingress": [
            {"action": "Allow", "source": {"nets": [
                *(f"192.0.2.{i}/32" for i in range(1, 21)), ip32("x/a"), ip32("y/b")]}}]}),
        np("x", "many-not-nets", {"selector": "all()", "ingress": [
            {"action": "Allow", "source": {"notNets": [
                *(f"198.51.100.{i}/32" for i in range(1, 21)), ip32("z/c")]}}]}))),
    scenario("calico-nets-and-selector", "y from pods a or c (any namespace) inside "
             "10.244.1.0/24: the AND leaves pods a", step(
        np("y", "and", {"selector": "all()", "ingress": [
            {"action": "Allow", "source": {"nets": ["10.244.1.0/24"],
                                           "selector": "pod in {'a', 'c'}",
                                           "namespaceSelector": "all()"}}]}))),
    scenario("calico-negated-policy-selector", "z pods without role=open deny UDP; z/a is "
             "labelled role=open", step(
        LabelPod("z/a", {"pod": "a", "role": "open"}),
        np("z", "closed", {"selector": "!has(role)", "ingress": [
            {"action": "Deny", "protocol": "UDP"}, ALLOW]}))),
    scenario("calico-many-policies", "40 policies on every pod of x; order 35 denies x/b",
             step(*(
        np("x", f"p-{i:02d}", {"order": i, "selector": "all()", "ingress": [
            {"action": "Deny", "source": {
                "nets": [ip32("y/b") if i == 35 else f"203.0.113.{i}/32"]}}]})
        for i in range(1, 41)),
        np("x", "p-last", {"order": 100, "selector": "all()", "ingress": [ALLOW]}))),
    scenario("calico-long-policy-names", "names longer than a chain name: two policies that "
             "differ only at the end must stay apart", step(
        np("x", "a-policy-name-that-is-far-too-long-for-an-iptables-chain-deny",
           {"order": 10, "selector": "pod == 'a'", "ingress": [{"action": "Deny"}]}),
        np("x", "a-policy-name-that-is-far-too-long-for-an-iptables-chain-allow",
           {"order": 10, "selector": "pod != 'a'", "ingress": [ALLOW]}),
        gnp("a-global-policy-name-that-is-far-too-long-for-an-iptables-chain-1",
            {"order": 10, "selector": "projectcalico.org/namespace == 'z'", "ingress": [
                {"action": "Deny", "protocol": "TCP"}, ALLOW]}),
        gnp("a-global-policy-name-that-is-far-too-long-for-an-iptables-chain-2",
            {"order": 20, "selector": "projectcalico.org/namespace == 'z'", "ingress": [
                ALLOW]}))),
    scenario(
        "calico-gnp-namespace-label-change",
        "GNP on namespaces team=red denies x; z is labelled team=red",
        step(gnp("red", {"namespaceSelector": "team == 'red'", "ingress": [
            {"action": "Deny", "source": {"namespaceSelector": "ns == 'x'"}}, ALLOW]})),
        step(LabelNamespace("z", {**NS_LABELS["z"], "team": "red"}), note="z labelled team=red"),
    ),
    scenario("calico-before-k8s-policy",
             "Calico Deny of pods b at order 500 beats a Kubernetes allow-all (order 1000)", step(
        np("x", "deny-b", {"order": 500, "selector": "all()", "ingress": [
            {"action": "Deny", "source": {"selector": "pod == 'b'",
                                          "namespaceSelector": "all()"}}]}),
        knp("x", "allow-all", {"podSelector": ALL, "ingress": [{}]}))),
)
