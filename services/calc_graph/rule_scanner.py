"""Rule scanner: v3 policy/profile rules -> Felix ``Rule`` messages with selectors as IP-set IDs.

Behaviour follows Felix's syncer conversion (libcalico-go ``updateprocessors/rules.go``) and
``felix/calc/rule_scanner.go``:

- A namespaced policy's own selector becomes ``(<selector>) && projectcalico.org/namespace ==
  '<ns>'``; a ``serviceAccountSelector`` is ANDed with its labels prefixed ``pcsa.``; a
  GlobalNetworkPolicy ``namespaceSelector`` is ANDed with its labels prefixed ``pcns.`` (with
  ``all()`` meaning "any namespace", ``has(projectcalico.org/namespace)``).
- In a rule's source/destination, ``selector``, ``serviceAccounts`` and ``namespaceSelector``
  fold into one selector; for a namespaced policy (or with a namespaceSelector) it is limited to
  the namespace(s) as soon as any selector field is used, including ``notSelector``. A
  ``notSelector`` alongside a positive selector is folded in as ``(<pos>) && (!(<neg>))``.
- Named ports become ``IP_AND_PORT`` sets of the positive selector (``all()`` if none), with the
  rule's protocol (tcp unless udp/sctp); numeric ports stay in the rule; the plain selector set
  is dropped when only named ports are used in that direction.
- Actions are lower-cased (``allow``, ``deny``, ``pass``, ``log``); protocol names too.
- ``rule_id`` chains SHA-224 over the seed and each serialised rule, as Felix does.

Parsed rules are cached per policy/profile version and shared by every node that has them
active: the ``ToDataplane`` message is built once.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable
from typing import Any

from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.selector import (
    ALL,
    SERVICE_ACCOUNT_LABEL_PREFIX,
    Selector,
    ast,
    make_unique_id,
    parse,
)

from .ipsets import IP_AND_PORT, NET, IPSetSpec
from .records import LABEL_NAMESPACE, LABEL_SERVICE_ACCOUNT, normalise_net

RULE_ID_LENGTH = 16
KIND_NETWORK_POLICY = "NetworkPolicy"
KIND_GLOBAL_NETWORK_POLICY = "GlobalNetworkPolicy"

# A profile that a local endpoint names but the datastore does not have: deny everything, as
# Felix's ActiveRulesCalculator does until the profile appears.
DENY_ALL_PROFILE: dict[str, Any] = {"ingress": [{"action": "Deny"}], "egress": [{"action": "Deny"}]}


# -- selector text ------------------------------------------------------------------------


def _prefixed(text: str, prefix: str) -> str:
    return str(parse(text).with_label_prefix(prefix))


def _namespace_selector(text: str) -> str:
    """A namespaceSelector over endpoints: ``pcns.`` labels, ``all()`` = any namespace."""
    return str(parse(text).for_namespace_selector())


def policy_selector(kind: str, namespace: str, spec: dict[str, Any]) -> Selector:
    """The selector Felix matches a policy against endpoints with (syncer conversion).

    Built as a tree from the (cached) parse of the user's selector, so ten thousand policies
    that differ only in namespace cost one parse each of their distinct user selectors. The
    tree is exactly what parsing ``(<selector>) && projectcalico.org/namespace == '<ns>'``
    gives (the parser does not flatten a parenthesised operand), hence the same canonical
    string.
    """
    text = str(spec.get("selector") or "")
    tree: ast.Node | None = parse(text).root if text else None
    if kind == KIND_NETWORK_POLICY and namespace:
        ns_term = ast.Eq(LABEL_NAMESPACE, namespace)
        tree = ast.And((tree, ns_term)) if tree is not None else ns_term
    elif spec.get("namespaceSelector"):
        ns_tree = parse(str(spec["namespaceSelector"])).for_namespace_selector().root
        tree = ast.And((tree, ns_tree)) if tree is not None else ns_tree
    if spec.get("serviceAccountSelector"):
        sa = parse(str(spec["serviceAccountSelector"])).with_label_prefix(
            SERVICE_ACCOUNT_LABEL_PREFIX
        )
        sa_tree = ast.map_leaves(
            sa.root,
            lambda n: ast.Has(LABEL_SERVICE_ACCOUNT) if isinstance(n, ast.All) else n,
        )
        tree = ast.And((tree, sa_tree)) if tree is not None else sa_tree
    return Selector(tree) if tree is not None else ALL


def _service_account_selector(sam: dict[str, Any]) -> str:
    sel = ""
    if sam.get("selector"):
        sel = _prefixed(str(sam["selector"]), SERVICE_ACCOUNT_LABEL_PREFIX)
    names = [str(n) for n in sam.get("names") or ()]
    if not names:
        return sel
    quoted = ", ".join(f"'{n}'" for n in names)
    names_sel = str(parse(f"{LABEL_SERVICE_ACCOUNT} in {{ {quoted} }}"))
    return f"({sel}) && ({names_sel})" if sel else names_sel


def entity_selector(er: dict[str, Any], namespace: str) -> str:
    """One selector for what a rule's source or destination may be (``GetEntityRuleSelector``)."""
    ns_sel = ""
    if er.get("namespaceSelector"):
        ns_sel = _namespace_selector(str(er["namespaceSelector"]))
    elif namespace:
        ns_sel = f"{LABEL_NAMESPACE} == '{namespace}'"
    parts = []
    if er.get("serviceAccounts"):
        sa = _service_account_selector(er["serviceAccounts"])
        if sa:
            parts.append(sa)
    if er.get("selector"):
        parts.append(str(er["selector"]))
    selector = parts[0] if len(parts) == 1 else ("(" + ") && (".join(parts) + ")" if parts else "")
    if ns_sel and (selector or er.get("notSelector") or er.get("namespaceSelector")):
        selector = f"({ns_sel}) && ({selector})" if selector else ns_sel
    return selector


# -- rule conversion ------------------------------------------------------------------------


def _protocol(value: Any) -> fb.Protocol | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return fb.Protocol(number=int(value))
    return fb.Protocol(name=str(value).lower())


def _ports(values: Any) -> tuple[list[fb.PortRange], list[str]]:
    numeric: list[fb.PortRange] = []
    named: list[str] = []
    for p in values or ():
        if isinstance(p, int):
            numeric.append(fb.PortRange(first=p, last=p))
            continue
        text = str(p)
        if text.isdigit():
            numeric.append(fb.PortRange(first=int(text), last=int(text)))
        elif ":" in text and all(part.isdigit() for part in text.split(":", 1)):
            lo, hi = text.split(":", 1)
            numeric.append(fb.PortRange(first=int(lo), last=int(hi)))
        else:
            named.append(text)
    return numeric, named


def _nets(values: Any) -> list[str]:
    out = []
    for v in values or ():
        n = normalise_net(str(v))
        if n is not None:
            out.append(n)
    return out


def _named_port_protocol(protocol: Any) -> str:
    name = str(protocol).lower() if protocol is not None else ""
    if name in ("udp", "17"):
        return "udp"
    if name in ("sctp", "132"):
        return "sctp"
    return "tcp"


class ParsedRules:
    """A policy's or profile's dataplane message plus the IP sets its rules reference."""

    __slots__ = ("ipsets", "message")

    def __init__(self, message: fb.ToDataplane, ipsets: dict[str, IPSetSpec]) -> None:
        self.message = message
        self.ipsets = ipsets


class RuleScanner:
    """Converts rules and owns the selector parse cache (one ``Selector`` per distinct text)."""

    def __init__(self, parse_selector: Callable[[str], Selector] = parse) -> None:
        self._parse = parse_selector
        self._selectors: dict[str, Selector] = {}

    def selector(self, text: str) -> Selector:
        sel = self._selectors.get(text)
        if sel is None:
            sel = self._parse(text)
            if len(self._selectors) > 200_000:
                self._selectors.clear()
            self._selectors[text] = sel
        return sel

    def scan_policy(
        self,
        kind: str,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        original_selector: str,
    ) -> ParsedRules:
        ipsets: dict[str, IPSetSpec] = {}
        ns = namespace if kind == KIND_NETWORK_POLICY else ""
        seed = f"{ns}/{name}" if ns else name
        policy = fb.Policy(
            inbound_rules=self._rules(spec.get("ingress"), ns, f"pol-in-default/{seed}", ipsets),
            outbound_rules=self._rules(spec.get("egress"), ns, f"pol-out-default/{seed}", ipsets),
            untracked=bool(spec.get("doNotTrack")),
            pre_dnat=bool(spec.get("preDNAT")),
            namespace=ns,
            original_selector=original_selector,
            perf_hints=[str(h) for h in spec.get("performanceHints") or ()],
            tier=str(spec.get("tier") or "default"),
        )
        msg = fb.ToDataplane(
            active_policy_update=fb.ActivePolicyUpdate(
                id=fb.PolicyID(name=name, namespace=ns, kind=kind), policy=policy
            )
        )
        return ParsedRules(msg, ipsets)

    def scan_profile(self, name: str, spec: dict[str, Any] | None) -> ParsedRules:
        if spec is None:
            spec = DENY_ALL_PROFILE
        ipsets: dict[str, IPSetSpec] = {}
        profile = fb.Profile(
            inbound_rules=self._rules(spec.get("ingress"), "", f"prof-in-{name}", ipsets),
            outbound_rules=self._rules(spec.get("egress"), "", f"prof-out-{name}", ipsets),
        )
        msg = fb.ToDataplane(
            active_profile_update=fb.ActiveProfileUpdate(
                id=fb.ProfileID(name=name), profile=profile
            )
        )
        return ParsedRules(msg, ipsets)

    def _rules(
        self, rules: Any, namespace: str, seed: str, ipsets: dict[str, IPSetSpec]
    ) -> list[fb.Rule]:
        out = [self._rule(r, namespace, ipsets) for r in rules or ()]
        _fill_rule_ids(out, seed)
        return out

    def _rule(self, rule: dict[str, Any], ns: str, ipsets: dict[str, IPSetSpec]) -> fb.Rule:
        src = rule.get("source") or {}
        dst = rule.get("destination") or {}
        protocol = rule.get("protocol")
        out = fb.Rule(action=str(rule.get("action") or "Allow").lower())

        ip_version = rule.get("ipVersion")
        if ip_version == 4:
            out.ip_version = fb.IPV4
        elif ip_version == 6:
            out.ip_version = fb.IPV6
        elif str(protocol).lower() == "icmp":
            out.ip_version = fb.IPV4
        elif str(protocol).lower() == "icmpv6":
            out.ip_version = fb.IPV6
        proto = _protocol(protocol)
        if proto is not None:
            out.protocol.CopyFrom(proto)
        not_proto = _protocol(rule.get("notProtocol"))
        if not_proto is not None:
            out.not_protocol.CopyFrom(not_proto)
        _icmp(out, rule.get("icmp"), negated=False)
        _icmp(out, rule.get("notICMP"), negated=True)

        np_proto = _named_port_protocol(protocol)
        for er, side in ((src, "src"), (dst, "dst")):
            positive = entity_selector(er, ns)
            negative = str(er.get("notSelector") or "")
            if positive and negative:
                positive = f"({positive}) && (!({negative}))"
                negative = ""
            pos_sel = self.selector(positive) if positive else None
            numeric, named = _ports(er.get("ports"))
            not_numeric, not_named = _ports(er.get("notPorts"))
            getattr(out, f"{side}_net").extend(_nets(er.get("nets")))
            getattr(out, f"not_{side}_net").extend(_nets(er.get("notNets")))
            getattr(out, f"{side}_ports").extend(numeric)
            getattr(out, f"not_{side}_ports").extend(not_numeric)
            port_sel = pos_sel if pos_sel is not None else self.selector("all()")
            for port_name in named:
                spec = self._named_port_set(port_sel, np_proto, port_name)
                ipsets[spec.id] = spec
                getattr(out, f"{side}_named_port_ip_set_ids").append(spec.id)
            for port_name in not_named:
                spec = self._named_port_set(port_sel, np_proto, port_name)
                ipsets[spec.id] = spec
                getattr(out, f"not_{side}_named_port_ip_set_ids").append(spec.id)
            if pos_sel is not None and (numeric or not named):
                ipsets[pos_sel.unique_id] = IPSetSpec(pos_sel.unique_id, pos_sel)
                getattr(out, f"{side}_ip_set_ids").append(pos_sel.unique_id)
            if negative:
                neg_sel = self.selector(negative)
                ipsets[neg_sel.unique_id] = IPSetSpec(neg_sel.unique_id, neg_sel)
                getattr(out, f"not_{side}_ip_set_ids").append(neg_sel.unique_id)
            services = er.get("services")
            if services and services.get("name"):
                svc = f"{services.get('namespace') or ns}/{services['name']}"
                if side == "dst":
                    spec = IPSetSpec(make_unique_id("svc", svc), None, None, svc, IP_AND_PORT)
                    out.dst_ip_port_set_ids.append(spec.id)
                    out.original_dst_service = str(services["name"])
                    out.original_dst_service_namespace = str(services.get("namespace") or "")
                else:
                    spec = IPSetSpec(make_unique_id("svcnoport", svc), None, None, svc, NET)
                    out.src_ip_set_ids.append(spec.id)
                    out.original_src_service = str(services["name"])
                    out.original_src_service_namespace = str(services.get("namespace") or "")
                ipsets[spec.id] = spec
            setattr(out, f"original_{side}_selector", str(er.get("selector") or ""))
            setattr(
                out, f"original_{side}_namespace_selector", str(er.get("namespaceSelector") or "")
            )
            setattr(out, f"original_not_{side}_selector", str(er.get("notSelector") or ""))
            sam = er.get("serviceAccounts")
            if sam:
                match = getattr(out, f"{side}_service_account_match")
                match.selector = str(sam.get("selector") or "")
                match.names.extend(str(n) for n in sam.get("names") or ())
        http = rule.get("http")
        if http:
            out.http_match.methods.extend(str(m) for m in http.get("methods") or ())
            for path in http.get("paths") or ():
                if path.get("exact"):
                    out.http_match.paths.add(exact=str(path["exact"]))
                elif path.get("prefix"):
                    out.http_match.paths.add(prefix=str(path["prefix"]))
        annotations = (rule.get("metadata") or {}).get("annotations")
        if annotations:
            out.metadata.annotations.update({str(k): str(v) for k, v in annotations.items()})
        return out

    @staticmethod
    def _named_port_set(sel: Selector, protocol: str, port: str) -> IPSetSpec:
        set_id = make_unique_id("n", f"{sel.unique_id},{protocol},{port}")
        return IPSetSpec(set_id, sel, (protocol, port), "", IP_AND_PORT)


def _icmp(out: fb.Rule, icmp: Any, negated: bool) -> None:
    if not icmp or icmp.get("type") is None:
        return
    if icmp.get("code") is not None:
        code = fb.IcmpTypeAndCode(type=int(icmp["type"]), code=int(icmp["code"]))
        (out.not_icmp_type_code if negated else out.icmp_type_code).CopyFrom(code)
    elif negated:
        out.not_icmp_type = int(icmp["type"])
    else:
        out.icmp_type = int(icmp["type"])


def _fill_rule_ids(rules: list[fb.Rule], seed: str) -> None:
    digest = hashlib.sha224(seed.encode()).digest()
    for rule in rules:
        rule.rule_id = ""
        h = hashlib.sha224(digest)
        h.update(rule.SerializeToString(deterministic=True))
        digest = h.digest()
        rule.rule_id = base64.urlsafe_b64encode(digest).decode()[:RULE_ID_LENGTH]


def policy_order(spec: dict[str, Any]) -> float:
    order = spec.get("order")
    if order is None:
        return math.inf
    try:
        return float(order)
    except (TypeError, ValueError):
        return math.inf
