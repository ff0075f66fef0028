"""An independent oracle: which probes Kubernetes NetworkPolicy + Calico policy allow.

Written from the specifications (the Kubernetes NetworkPolicy API reference and Calico's policy
documentation, summarised in ``shared/reference/calico.md`` §4.3 and §7), not from this
repository's code: nothing here imports the calc graph, the policy compiler, the dataplane or
the selector evaluator. ``libcalico.selector.parse`` is used only to turn selector text into a
syntax tree; evaluating that tree against labels is done here (``eval_selector``).

The model (``World``) is what a user has put in the cluster: namespaces with labels, pods with
labels, an address, a node and named container ports, Kubernetes NetworkPolicies exactly as
written (``networking.k8s.io/v1``; never converted), and Calico resources (NetworkPolicy,
GlobalNetworkPolicy, NetworkSet, GlobalNetworkSet, Tier, extra Profiles) as ``projectcalico.org/v3``
dicts before any defaulting.

A connection from pod S to pod D is allowed when S's **egress** evaluation and D's **ingress**
evaluation both allow it. Each evaluation, for one endpoint and one direction:

1. Tiers in order (``order`` ascending, no order last, then by name; the ``default`` tier has
   order 1,000,000 and action Deny unless a Tier resource says otherwise). A tier takes part
   only if at least one of its policies *applies*: it selects the endpoint and governs the
   direction (its ``types``; for Kubernetes its ``policyTypes``).
2. Within a tier, applicable policies by ``order`` (none = last), then by name; within a policy,
   rules in order. The first matching rule decides: ``Allow`` allows, ``Deny`` denies, ``Pass``
   skips the rest of the tier and goes to the next one; ``Log`` does not decide and evaluation
   carries on. If nothing in the tier decided, the tier's default action applies (``Deny``, or
   ``Pass`` to the next tier).
3. When no tier applied, or the last applicable tier passed: the endpoint's profiles in order;
   a matching rule decides as above; when no profile rule matches, deny. Kubernetes pods carry
   the ``kns.<namespace>`` profile, which allows everything (Kubernetes' default allow), and a
   ``ksa.<namespace>.<sa>`` profile with no rules. A profile an endpoint names that does not
   exist denies everything.

A Kubernetes NetworkPolicy takes part as a policy of the ``default`` tier with order 1000 named
``knp.default.<name>``; all its rules allow. Its semantics are the Kubernetes API's: the policy
selects pods of its namespace with ``podSelector``; ``policyTypes`` defaults (as the API server
does) to Ingress, plus Egress when egress rules are present; a rule with no peers matches every
peer and one with no ports every port; a peer is ``ipBlock`` (cidr minus ``except``), or pods
chosen by ``podSelector`` in the policy's namespace, by ``namespaceSelector`` in every pod of the
matching namespaces, or by both (pods matching ``podSelector`` *in* namespaces matching
``namespaceSelector``); a port defaults to TCP, no port means every port of the protocol, a name
is looked up in the destination pod's container ports (same protocol), ``endPort`` makes a range.

Calico rules: ``protocol``/``notProtocol`` (names or numbers), ``icmp``/``notICMP`` (type and
optional code), and per side ``nets``/``notNets``, ``selector``/``notSelector``/
``namespaceSelector`` and ``ports``/``notPorts`` (numbers, ``"a:b"`` ranges, named ports). A
side's selectors match an address when some endpoint or network set that owns the address
matches them: in a namespaced policy, only those in the policy's namespace unless a
``namespaceSelector`` is given (``all()`` there means any namespace, ``global()`` the
non-namespaced GlobalNetworkSets). Calico selectors see an endpoint's own labels plus
``projectcalico.org/namespace``, ``projectcalico.org/orchestrator`` and
``projectcalico.org/serviceaccount``; a namespaced NetworkSet's plus
``projectcalico.org/namespace``. ``serviceAccounts.names`` matches pods running as one of
the names (scoped like a selector). A named port matches the destination endpoint's port of that
name and the rule's protocol. A rule with ports only matches TCP/UDP/SCTP.
"""

from __future__ import annotations

import copy
import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from libcalico.selector import ast, parse

# -- probes ---------------------------------------------------------------------------------

PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132, "udplite": 136}


@dataclass(frozen=True)
class Packet:
    """The first packet of a probe: protocol and destination port (or ICMP type/code)."""

    protocol: str  # "tcp" | "udp" | "icmp"
    port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None

    @property
    def number(self) -> int:
        return PROTO_NUMBERS[self.protocol]


PROBES: dict[str, Packet] = {
    "tcp/80": Packet("tcp", 80),
    "tcp/81": Packet("tcp", 81),
    "udp/80": Packet("udp", 80),
    "icmp": Packet("icmp", icmp_type=8, icmp_code=0),  # echo request
}

# -- the world ------------------------------------------------------------------------------

DEFAULT_TIER = "default"
DEFAULT_TIER_ORDER = 1_000_000.0
K8S_POLICY_ORDER = 1000.0
K8S_API = "networking.k8s.io/v1"
CALICO_API = "projectcalico.org/v3"
NAMESPACED_KINDS = frozenset({"NetworkPolicy", "NetworkSet", "WorkloadEndpoint"})


@dataclass
class Pod:
    namespace: str
    name: str
    labels: dict[str, str]
    ip: str
    node: str
    ports: tuple[tuple[str, str, int], ...]  # (name, protocol upper-case, port)
    service_account: str = "default"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class World:
    """What the user has created. ``calico`` is keyed by (kind, namespace or "", name)."""

    namespaces: dict[str, dict[str, str]]
    pods: dict[str, Pod]
    k8s_policies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calico: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def copy(self) -> World:
        return copy.deepcopy(self)

    def apply(self, resource: Mapping[str, Any]) -> None:
        res = copy.deepcopy(dict(resource))
        md = res["metadata"]
        if res.get("apiVersion") == K8S_API:
            self.k8s_policies[(md.get("namespace") or "default", md["name"])] = res
        else:
            ns = (md.get("namespace") or "") if res["kind"] in NAMESPACED_KINDS else ""
            self.calico[(res["kind"], ns, md["name"])] = res

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        if kind == "K8sNetworkPolicy":
            del self.k8s_policies[(namespace, name)]
        else:
            del self.calico[(kind, namespace, name)]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for (k, _, _), r in sorted(self.calico.items()) if k == kind]


# -- selectors ------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _tree(text: str) -> ast.Node:
    return parse(text).root


def eval_selector(
    node: ast.Node, labels: Mapping[str, str], *, all_: bool = True, global_: bool = True
) -> bool:
    """Calico selector semantics over one label map.

    ``all_``/``global_`` are what ``all()``/``global()`` mean here: both true for endpoint
    selectors; in a namespaceSelector they say whether the item is namespaced.
    """
    match node:
        case ast.All():
            return all_
        case ast.Global():
            return global_
        case ast.Has(label=label):
            return label in labels
        case ast.Eq(label=label, value=value):
            return labels.get(label) == value
        case ast.Ne(label=label, value=value):
            return labels.get(label) != value
        case ast.Contains(label=label, value=value):
            return label in labels and value in labels[label]
        case ast.StartsWith(label=label, value=value):
            return label in labels and labels[label].startswith(value)
        case ast.EndsWith(label=label, value=value):
            return label in labels and labels[label].endswith(value)
        case ast.In(label=label, values=values):
            return label in labels and labels[label] in values
        case ast.NotIn(label=label, values=values):
            return label not in labels or labels[label] not in values
        case ast.Not(operand=operand):
            return not eval_selector(operand, labels, all_=all_, global_=global_)
        case ast.And(operands=operands):
            return all(eval_selector(o, labels, all_=all_, global_=global_) for o in operands)
        case ast.Or(operands=operands):
            return any(eval_selector(o, labels, all_=all_, global_=global_) for o in operands)
    raise TypeError(f"unknown selector node {node!r}")


def calico_selects(text: str | None, labels: Mapping[str, str]) -> bool:
    """An endpoint selector; empty or absent selects everything."""
    return True if not text else eval_selector(_tree(text), labels)


def k8s_selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector: ``{}`` selects everything; requirements are ANDed."""
    sel = selector or {}
    for key, value in (sel.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in sel.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], expr.get("values") or ()
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# -- items: what owns an address ------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """An endpoint or network set, as rule selectors see it."""

    kind: str  # "pod" | "netset" | "gnetset"
    namespace: str | None  # None: not namespaced
    labels: Mapping[str, str]  # as Calico selectors see them
    nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    ports: tuple[tuple[str, str, int], ...] = ()
    pod: Pod | None = None

    def owns(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in n for n in self.nets)


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def _port_match(entry: int | str, port: int, named: Callable[[str], bool]) -> bool:
    if isinstance(entry, int):
        return port == entry
    text = str(entry)
    if text.isdigit():
        return port == int(text)
    if ":" in text:
        lo, hi = text.split(":", 1)
        return int(lo) <= port <= int(hi)
    return named(text)


def _protocol_number(value: Any) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    return PROTO_NUMBERS[str(value).lower()]


# -- policies as the tier walk sees them ----------------------------------------------------

ALLOW, DENY, PASS = "Allow", "Deny", "Pass"


@dataclass(frozen=True)
class Flow:
    src: Pod
    dst: Pod
    packet: Packet

    def peer_ip(self, direction: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.src.ip if direction == "ingress" else self.dst.ip)


class Policy:
    tier: str
    order: float
    name: str

    def applies(self, pod: Pod, direction: str) -> bool:
        raise NotImplementedError

    def decide(self, flow: Flow, direction: str) -> str | None:
        """The action of the first rule that matches and decides, or None."""
        raise NotImplementedError


class Oracle:
    """Expected verdicts for every (source pod, destination pod, probe) of a ``World``."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.ns_labels = {n: dict(lbls) for n, lbls in world.namespaces.items()}
        self.items = self._items()
        self.tiers = self._tiers()
        self.policies: list[Policy] = [
            *(CalicoPolicy(self, r) for r in world.of_kind("NetworkPolicy")),
            *(CalicoPolicy(self, r) for r in world.of_kind("GlobalNetworkPolicy")),
            *(K8sPolicy(self, r) for _, r in sorted(world.k8s_policies.items())),
        ]

    # -- the model ---------------------------------------------------------------------------

    def _items(self) -> list[Item]:
        out = []
        for pod in self.world.pods.values():
            labels = {
                **pod.labels,
                "projectcalico.org/namespace": pod.namespace,
                "projectcalico.org/orchestrator": "k8s",
                "projectcalico.org/serviceaccount": pod.service_account,
            }
            out.append(Item("pod", pod.namespace, labels, (_net(pod.ip),), pod.ports, pod))
        for r in self.world.of_kind("NetworkSet"):
            md = r["metadata"]
            labels = {**(md.get("labels") or {}), "projectcalico.org/namespace": md["namespace"]}
            nets = tuple(_net(n) for n in r["spec"].get("nets") or ())
            out.append(Item("netset", md["namespace"], labels, nets))
        for r in self.world.of_kind("GlobalNetworkSet"):
            md = r["metadata"]
            nets = tuple(_net(n) for n in r["spec"].get("nets") or ())
            out.append(Item("gnetset", None, dict(md.get("labels") or {}), nets))
        return out

    def _tiers(self) -> dict[str, tuple[float, str]]:
        tiers = {DEFAULT_TIER: (DEFAULT_TIER_ORDER, DENY)}
        for r in self.world.of_kind("Tier"):
            spec = r.get("spec") or {}
            order = spec.get("order")
            tiers[r["metadata"]["name"]] = (
                float(order) if order is not None else math.inf,
                spec.get("defaultAction") or DENY,
            )
        return tiers

    def owners(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Item]:
        return [i for i in self.items if i.owns(ip)]

    def profile_rules(self, name: str, direction: str) -> list[dict[str, Any]] | None:
        """Rules of a profile the endpoint names; None when the profile does not exist."""
        prefix, _, rest = name.partition(".")
        for r in self.world.of_kind("Profile"):
            if r["metadata"]["name"] == name:
                return list(r["spec"].get(direction) or ())
        if prefix == "kns" and rest in self.world.namespaces:
            return [{"action": ALLOW}]  # the namespace profile: allow all
        if prefix == "ksa" and rest.split(".", 1)[0] in self.world.namespaces:
            return []  # the service-account profile: labels only, no rules
        return None

    # -- verdicts ----------------------------------------------------------------------------

    def endpoint_verdict(self, pod: Pod, flow: Flow, direction: str) -> bool:
        applicable = [p for p in self.policies if p.applies(pod, direction)]
        tier_names = sorted({p.tier for p in applicable},
                            key=lambda t: (self.tiers.get(t, (math.inf, DENY))[0], t))
        for tier in tier_names:
            decided: str | None = None
            for policy in sorted((p for p in applicable if p.tier == tier),
                                 key=lambda p: (p.order, p.name)):
                decided = policy.decide(flow, direction)
                if decided is not None:
                    break
            if decided is None:
                decided = self.tiers.get(tier, (math.inf, DENY))[1]
            if decided == ALLOW:
                return True
            if decided == DENY:
                return False
            # Pass: on to the next tier, then the profiles.
        profiles = ["kns." + pod.namespace, f"ksa.{pod.namespace}.{pod.service_account}"]
        for name in profiles:
            rules = self.profile_rules(name, direction)
            if rules is None:
                return False
            rule_eval = RuleEval(self, namespace="", flow=flow, direction=direction)
            for rule in rules:
                action = rule_eval.action(rule)
                if action in (ALLOW, DENY):
                    return action == ALLOW
        return False

    def allowed(self, src: str, dst: str, probe: str) -> bool:
        s, d = self.world.pods[src], self.world.pods[dst]
        flow = Flow(s, d, PROBES[probe])
        return self.endpoint_verdict(s, flow, "egress") and self.endpoint_verdict(
            d, flow, "ingress")

    def matrix(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str, str], bool]:
        return {(s, d, p): self.allowed(s, d, p) for s, d in pairs for p in PROBES}


# -- Calico policies ------------------------------------------------------------------------


def calico_types(spec: Mapping[str, Any]) -> set[str]:
    """``types``, or Calico's default: Ingress, unless there are egress rules and no ingress
    rules (Egress), or both kinds of rule (both)."""
    if spec.get("types"):
        return {str(t).lower() for t in spec["types"]}
    if not spec.get("egress"):
        return {"ingress"}
    if not spec.get("ingress"):
        return {"egress"}
    return {"ingress", "egress"}


class CalicoPolicy(Policy):
    def __init__(self, oracle: Oracle, res: dict[str, Any]) -> None:
        self.oracle = oracle
        self.kind = res["kind"]
        md, self.spec = res["metadata"], res.get("spec") or {}
        self.namespace = (md.get("namespace") or "") if self.kind == "NetworkPolicy" else ""
        self.name = md["name"]
        self.tier = self.spec.get("tier") or DEFAULT_TIER
        order = self.spec.get("order")
        self.order = float(order) if order is not None else math.inf
        self.types = calico_types(self.spec)

    def applies(self, pod: Pod, direction: str) -> bool:
        if direction not in self.types:
            return False
        if self.namespace and pod.namespace != self.namespace:
            return False
        labels = next(i.labels for i in self.oracle.items if i.pod is pod)
        if not calico_selects(self.spec.get("selector"), labels):
            return False
        ns_sel = self.spec.get("namespaceSelector")
        if self.kind == "GlobalNetworkPolicy" and ns_sel:
            ns_labels = self.oracle.ns_labels.get(pod.namespace, {})
            return eval_selector(_tree(ns_sel), ns_view(pod.namespace, ns_labels),
                                 all_=True, global_=False)
        return True

    def decide(self, flow: Flow, direction: str) -> str | None:
        rule_eval = RuleEval(self.oracle, self.namespace, flow, direction)
        for rule in self.spec.get(direction) or ():
            action = rule_eval.action(rule)
            if action in (ALLOW, DENY, PASS):
                return action
        return None


def ns_view(namespace: str, labels: Mapping[str, str]) -> dict[str, str]:
    """A namespace's labels as namespaceSelectors see them (Calico adds its name)."""
    return {**labels, "projectcalico.org/name": namespace}


@dataclass
class RuleEval:
    """Matches Calico rules against one flow seen from one endpoint in one direction."""

    oracle: Oracle
    namespace: str  # the policy's namespace; "" for global policies and profiles
    flow: Flow
    direction: str

    def action(self, rule: Mapping[str, Any]) -> str | None:
        """The rule's action if it matches (``Log`` included), else None."""
        return str(rule.get("action") or ALLOW) if self.matches(rule) else None

    def matches(self, rule: Mapping[str, Any]) -> bool:
        pkt = self.flow.packet
        if rule.get("ipVersion") == 6:
            return False
        if rule.get("protocol") is not None and _protocol_number(rule["protocol"]) != pkt.number:
            return False
        if rule.get("notProtocol") is not None and _protocol_number(
                rule["notProtocol"]) == pkt.number:
            return False
        icmp = rule.get("icmp")
        if icmp and not _icmp_match(icmp, pkt):
            return False
        not_icmp = rule.get("notICMP")
        if not_icmp and _icmp_match(not_icmp, pkt):
            return False
        src_ip = ipaddress.ip_address(self.flow.src.ip)
        dst_ip = ipaddress.ip_address(self.flow.dst.ip)
        proto = str(rule.get("protocol") or "").lower()
        return self._side(rule.get("source") or {}, src_ip, None, proto) and self._side(
            rule.get("destination") or {}, dst_ip, pkt.port, proto)

    def _side(self, er: Mapping[str, Any],
              ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | None,
              rule_protocol: str) -> bool:
        if er.get("nets") and not any(ip in _net(n) for n in er["nets"]):
            return False
        if er.get("notNets") and any(ip in _net(n) for n in er["notNets"]):
            return False
        sel, not_sel = er.get("selector"), er.get("notSelector")
        ns_sel = er.get("namespaceSelector")
        owners = self.oracle.owners(ip)

        def in_scope(item: Item) -> bool:
            if ns_sel:
                labels = ns_view(item.namespace, self.oracle.ns_labels.get(item.namespace, {})) \
                    if item.namespace is not None else {}
                return eval_selector(_tree(ns_sel), labels, all_=item.namespace is not None,
                                     global_=item.namespace is None)
            if self.namespace:
                return item.namespace == self.namespace
            return True

        sa = er.get("serviceAccounts")
        if sa and sa.get("selector"):
            raise NotImplementedError("service account labels are not modelled")

        def positive(item: Item) -> bool:
            if sa and sa.get("names") and not (
                    item.pod is not None and item.pod.service_account in sa["names"]):
                return False
            return (in_scope(item) and calico_selects(sel, item.labels)
                    and not (not_sel and calico_selects(not_sel, item.labels)))

        has_positive = bool(sel or ns_sel or sa or (not_sel and self.namespace))
        if has_positive:
            candidates = [i for i in owners if positive(i)]
            if not candidates:
                return False
        else:
            if not_sel and any(calico_selects(not_sel, i.labels) for i in owners):
                return False
            candidates = owners
        pkt = self.flow.packet
        ports, not_ports = er.get("ports"), er.get("notPorts")
        if not ports and not not_ports:
            return True
        if port is None:
            if pkt.protocol not in ("tcp", "udp", "sctp"):
                return False
            raise NotImplementedError("source ports are not modelled: probes pick their own")
        named_proto = rule_protocol if rule_protocol in ("udp", "sctp") else "tcp"

        def named(name: str) -> bool:
            return any(pname == name and pproto.lower() == named_proto and pport == port
                       for i in candidates for pname, pproto, pport in i.ports)

        if pkt.protocol not in ("tcp", "udp", "sctp"):
            return False
        if ports and not any(_port_match(p, port, named) for p in ports):
            return False
        return not (not_ports and any(_port_match(p, port, named) for p in not_ports))


def _icmp_match(icmp: Mapping[str, Any], pkt: Packet) -> bool:
    if pkt.protocol != "icmp":
        return False
    if icmp.get("type") is not None and icmp["type"] != pkt.icmp_type:
        return False
    return icmp.get("code") is None or icmp["code"] == pkt.icmp_code


# -- Kubernetes NetworkPolicy ---------------------------------------------------------------


def k8s_policy_types(spec: Mapping[str, Any]) -> set[str]:
    """``policyTypes`` as the API server defaults it: Ingress, plus Egress with egress rules."""
    if spec.get("policyTypes"):
        return {str(t).lower() for t in spec["policyTypes"]}
    return {"ingress", "egress"} if spec.get("egress") else {"ingress"}


class K8sPolicy(Policy):
    def __init__(self, oracle: Oracle, res: dict[str, Any]) -> None:
        self.oracle = oracle
        md = res["metadata"]
        self.namespace = md.get("namespace") or "default"
        self.name = f"knp.default.{md['name']}"
        self.tier = DEFAULT_TIER
        self.order = K8S_POLICY_ORDER
        self.spec = res.get("spec") or {}
        self.types = k8s_policy_types(self.spec)

    def applies(self, pod: Pod, direction: str) -> bool:
        return (direction in self.types and pod.namespace == self.namespace
                and k8s_selects(self.spec.get("podSelector"), pod.labels))

    def decide(self, flow: Flow, direction: str) -> str | None:
        peers_key = "from" if direction == "ingress" else "to"
        peer_pod = flow.src if direction == "ingress" else flow.dst
        for rule in self.spec.get(direction) or ():
            peers = rule.get(peers_key) or ()
            if peers and not any(self._peer(p, peer_pod) for p in peers):
                continue
            ports = rule.get("ports") or ()
            if ports and not any(_k8s_port(p, flow.packet, flow.dst) for p in ports):
                continue
            return ALLOW
        return None

    def _peer(self, peer: Mapping[str, Any], pod: Pod) -> bool:
        if peer.get("ipBlock"):
            block = peer["ipBlock"]
            ip = ipaddress.ip_address(pod.ip)
            return ip in _net(block["cidr"]) and not any(
                ip in _net(e) for e in block.get("except") or ())
        ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
        if ns_sel is None:
            if pod.namespace != self.namespace:
                return False
        elif not k8s_selects(ns_sel, self.oracle.ns_labels.get(pod.namespace, {})):
            return False
        return k8s_selects(pod_sel, pod.labels)


def _k8s_port(port: Mapping[str, Any], pkt: Packet, dst: Pod) -> bool:
    protocol = str(port.get("protocol") or "TCP").lower()
    if pkt.protocol != protocol:
        return False
    if port.get("port") is None:
        return True
    value = port["port"]
    if isinstance(value, str) and not value.isdigit():
        return any(name == value and proto.lower() == protocol and number == pkt.port
                   for name, proto, number in dst.ports)
    first = int(value)
    last = int(port["endPort"]) if port.get("endPort") is not None else first
    return pkt.port is not None and first <= pkt.port <= last
