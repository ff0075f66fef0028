"""Kubernetes objects as Calico sees them: NetworkPolicy conversion and namespace profiles.

``k8s_network_policy_to_calico`` follows Calico's converter: the policy becomes a Calico
NetworkPolicy named ``knp.default.<name>`` in tier ``default`` at order 1000. Pod selectors gain
``projectcalico.org/orchestrator == 'k8s'`` so they only match Kubernetes pods; a peer's
namespaceSelector becomes the rule's ``namespaceSelector`` (an empty one selects ``all()``
namespaces, an absent one means the policy's own namespace); an ipBlock becomes ``nets`` and
``notNets``. Ports default to TCP and are grouped into one rule per protocol (protocols in
sorted order) and peer, with adjacent numeric ports merged into ranges; ``endPort`` makes a
``"port:endPort"`` range. Types come from ``policyTypes``, defaulting to Ingress.

``namespace_profile`` builds the ``kns.<namespace>`` Profile Calico keeps for each namespace:
allow-all ingress and egress, and the namespace's labels re-applied to its endpoints as
``pcns.<key>`` plus ``pcns.projectcalico.org/name: <namespace>``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, cast

from libcalico.model.checks import (
    Ctx,
    as_int,
    as_list,
    as_map,
    as_str,
    as_str_list,
    as_str_map,
    check_fields,
    enum,
    join_path,
    parse_port,
    show,
)
from libcalico.model.defaults import (
    DEFAULT_NAMESPACE,
    DEFAULT_TIER,
    K8S_POLICY_ORDER,
    K8S_POLICY_PREFIX,
    LABEL_ORCHESTRATOR,
    NAME_LABEL,
    NAMESPACE_LABEL_PREFIX,
    NAMESPACE_PROFILE_PREFIX,
)
from libcalico.model.kinds import API_VERSION
from libcalico.model.types import Resource

K8S_NETWORKING_API_VERSION = "networking.k8s.io/v1"
K8S_PROTOCOLS = ("TCP", "UDP", "SCTP")

_POLICY_SPEC_FIELDS = ("podSelector", "policyTypes", "ingress", "egress")
_PEER_FIELDS = ("podSelector", "namespaceSelector", "ipBlock")
_PORT_FIELDS = ("protocol", "port", "endPort")
_EXPRESSION_OPS = ("In", "NotIn", "Exists", "DoesNotExist")

_ALLOW_ALL: dict[str, Any] = {"action": "Allow", "source": {}, "destination": {}}


def k8s_selector_to_calico(
    ctx: Ctx, path: str, selector: Any, *, pods: bool
) -> str:
    """A Kubernetes LabelSelector as a Calico selector expression.

    Pod selectors always include ``projectcalico.org/orchestrator == 'k8s'``. For namespace
    selectors an absent selector is ``""`` (the policy's namespace) and an empty one ``all()``.
    """
    terms = [f"{LABEL_ORCHESTRATOR} == 'k8s'"] if pods else []
    if selector is None:
        return " && ".join(terms)
    sel = as_map(ctx, path, selector)
    check_fields(ctx, path, sel, ("matchLabels", "matchExpressions"))
    labels = as_str_map(ctx, join_path(path, "matchLabels"), sel.get("matchLabels") or {})
    exprs = as_list(ctx, join_path(path, "matchExpressions"), sel.get("matchExpressions") or [])
    if not pods and not labels and not exprs:
        return "all()"
    for key in sorted(labels):
        terms.append(f"{key} == '{labels[key]}'")
    for i, raw in enumerate(exprs):
        epath = join_path(join_path(path, "matchExpressions"), i)
        expr = as_map(ctx, epath, raw)
        check_fields(ctx, epath, expr, ("key", "operator", "values"))
        key = as_str(ctx, join_path(epath, "key"), expr.get("key"))
        op = enum(ctx, join_path(epath, "operator"), expr.get("operator"), _EXPRESSION_OPS)
        values = as_str_list(ctx, join_path(epath, "values"), expr.get("values") or [])
        if op in ("In", "NotIn") and not values:
            ctx.fail(join_path(epath, "values"), f"operator {op} needs at least one value")
        value_list = "', '".join(values)
        if op == "In":
            terms.append(f"{key} in {{ '{value_list}' }}")
        elif op == "NotIn":
            terms.append(f"{key} not in {{ '{value_list}' }}")
        elif op == "Exists":
            terms.append(f"has({key})")
        else:
            terms.append(f"! has({key})")
    return " && ".join(terms)


def simplify_ports(ports: list[int | str]) -> list[int | str]:
    """Merge numeric ports into the fewest ranges; named ports pass through first.

    ``[80, 81, 82, 9090, "http"]`` becomes ``["http", "80:82", 9090]``. Fewer than two numeric
    ports leave the list as it was.
    """
    if len(ports) <= 1:
        return ports
    numbers: list[int] = []
    out: list[int | str] = []
    for p in ports:
        if isinstance(p, int):
            numbers.append(p)
        elif ":" in p:
            lo, hi = (int(x) for x in p.split(":"))
            numbers.extend(range(lo, hi + 1))
        else:
            out.append(p)
    if len(numbers) <= 1:
        return ports
    numbers.sort()
    i = 0
    while i < len(numbers):
        first = last = numbers[i]
        i += 1
        while i < len(numbers) and numbers[i] <= last + 1:
            last = numbers[i]
            i += 1
        out.append(first if first == last else f"{first}:{last}")
    return out


def _port(ctx: Ctx, path: str, raw: Any) -> tuple[str, list[int | str] | None]:
    """(protocol, ports) for one NetworkPolicyPort; ports None means every port."""
    port = as_map(ctx, path, raw)
    check_fields(ctx, path, port, _PORT_FIELDS)
    proto_text = as_str(ctx, join_path(path, "protocol"), port.get("protocol") or "TCP")
    protocol = next((p for p in K8S_PROTOCOLS if p.lower() == proto_text.lower()), None)
    if protocol is None:
        ctx.fail(
            join_path(path, "protocol"),
            f"{show(proto_text)} is not one of {', '.join(K8S_PROTOCOLS)}",
        )
    if port.get("port") is None:
        if port.get("endPort") is not None:
            ctx.fail(join_path(path, "endPort"), "endPort needs port to be set")
        return protocol, None
    value = port["port"]
    if isinstance(value, bool) or not isinstance(value, int | str):
        ctx.fail(join_path(path, "port"), f"must be a number or a port name, got {show(value)}")
    text = str(value)
    if port.get("endPort") is not None:
        end = as_int(ctx, join_path(path, "endPort"), port["endPort"], 1, 65535)
        if not text.isdigit():
            ctx.fail(join_path(path, "endPort"), f"endPort needs a numeric port, not {show(text)}")
        text = f"{text}:{end}"
    return protocol, [parse_port(ctx, join_path(path, "port"), text)]


def _peer(
    ctx: Ctx, path: str, raw: Any
) -> dict[str, Any]:
    """The EntityRule fields for one NetworkPolicyPeer."""
    peer = as_map(ctx, path, raw)
    check_fields(ctx, path, peer, _PEER_FIELDS)
    if peer.get("ipBlock") is not None:
        if peer.get("podSelector") is not None or peer.get("namespaceSelector") is not None:
            ctx.fail(path, "ipBlock cannot be combined with podSelector or namespaceSelector")
        bpath = join_path(path, "ipBlock")
        block = as_map(ctx, bpath, peer["ipBlock"])
        check_fields(ctx, bpath, block, ("cidr", "except"))
        cidr = _masked(ctx, join_path(bpath, "cidr"), block.get("cidr"))
        fields: dict[str, Any] = {"nets": [cidr]}
        excepts = as_list(ctx, join_path(bpath, "except"), block.get("except") or [])
        if excepts:
            fields["notNets"] = [
                _masked(ctx, join_path(join_path(bpath, "except"), i), c)
                for i, c in enumerate(excepts)
            ]
        return fields
    fields = {}
    selector = k8s_selector_to_calico(ctx, join_path(path, "podSelector"),
                                      peer.get("podSelector"), pods=True)
    ns_selector = k8s_selector_to_calico(ctx, join_path(path, "namespaceSelector"),
                                         peer.get("namespaceSelector"), pods=False)
    if selector:
        fields["selector"] = selector
    if ns_selector:
        fields["namespaceSelector"] = ns_selector
    return fields


def _masked(ctx: Ctx, path: str, value: Any) -> str:
    text = as_str(ctx, path, value)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        ctx.fail(path, f"{show(text)} is not a valid CIDR")


def _rules(ctx: Ctx, path: str, raw: Any, peers_key: str, ingress: bool) -> list[dict[str, Any]]:
    rule = as_map(ctx, path, raw)
    check_fields(ctx, path, rule, (peers_key, "ports"))
    peers: list[dict[str, Any] | None] = [
        _peer(ctx, join_path(join_path(path, peers_key), i), p)
        for i, p in enumerate(as_list(ctx, join_path(path, peers_key), rule.get(peers_key) or []))
    ] or [None]
    raw_ports = as_list(ctx, join_path(path, "ports"), rule.get("ports") or [])

    by_protocol: dict[str, list[int | str] | None] = {}
    if not raw_ports:
        by_protocol = {"": None}
    for i, raw_port in enumerate(raw_ports):
        protocol, ports = _port(ctx, join_path(join_path(path, "ports"), i), raw_port)
        if ports is None:
            by_protocol[protocol] = None  # every port of this protocol
        elif protocol not in by_protocol:
            by_protocol[protocol] = list(ports)
        elif by_protocol[protocol] is not None:
            cast(list[int | str], by_protocol[protocol]).extend(ports)

    rules: list[dict[str, Any]] = []
    for protocol in sorted(by_protocol):
        ports = by_protocol[protocol]
        port_fields = {"ports": simplify_ports(ports)} if ports else {}
        for peer in peers:
            out: dict[str, Any] = {"action": "Allow"}
            if protocol:
                out["protocol"] = protocol
            if ingress:
                out["source"] = dict(peer or {})
                out["destination"] = dict(port_fields)
            else:
                out["source"] = {}
                out["destination"] = {**port_fields, **(peer or {})}
            rules.append(out)
    return rules


def k8s_network_policy_to_calico(policy: Mapping[str, Any]) -> Resource:
    """A ``networking.k8s.io/v1`` NetworkPolicy as the Calico NetworkPolicy Calico derives."""
    meta_raw = policy.get("metadata")
    meta = meta_raw if isinstance(meta_raw, Mapping) else {}
    name = meta.get("name")
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE
    ctx = Ctx("NetworkPolicy", f"{K8S_POLICY_PREFIX}{name or ''}", str(namespace))
    kind = (policy.get("apiVersion"), policy.get("kind"))
    if kind != (K8S_NETWORKING_API_VERSION, "NetworkPolicy"):
        ctx.fail("kind", f"not a {K8S_NETWORKING_API_VERSION} NetworkPolicy")
    if not isinstance(name, str) or not name:
        ctx.fail("metadata.name", "a NetworkPolicy needs a name")
    as_str(ctx, "metadata.namespace", namespace)
    spec = as_map(ctx, "spec", policy.get("spec") or {})
    check_fields(ctx, "spec", spec, _POLICY_SPEC_FIELDS)

    ingress: list[dict[str, Any]] = []
    for i, r in enumerate(as_list(ctx, "spec.ingress", spec.get("ingress") or [])):
        ingress.extend(_rules(ctx, f"spec.ingress[{i}]", r, "from", ingress=True))
    egress: list[dict[str, Any]] = []
    for i, r in enumerate(as_list(ctx, "spec.egress", spec.get("egress") or [])):
        egress.extend(_rules(ctx, f"spec.egress[{i}]", r, "to", ingress=False))

    policy_types = as_list(ctx, "spec.policyTypes", spec.get("policyTypes") or [])
    for i, t in enumerate(policy_types):
        enum(ctx, f"spec.policyTypes[{i}]", t, ("Ingress", "Egress"))
    if policy_types:
        types = [t for t in ("Ingress", "Egress") if t in policy_types]
    else:
        # The API server's defaulting, which Calico sees already applied: Ingress always, and
        # Egress when the policy has egress rules; without it those rules would be dropped.
        types = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]

    out_meta: dict[str, Any] = {"name": f"{K8S_POLICY_PREFIX}{name}", "namespace": namespace}
    for key in ("uid", "creationTimestamp", "resourceVersion"):
        if meta.get(key):
            out_meta[key] = str(meta[key])
    out_spec: dict[str, Any] = {
        "tier": DEFAULT_TIER,
        "order": K8S_POLICY_ORDER,
        "selector": k8s_selector_to_calico(
            ctx, "spec.podSelector", spec.get("podSelector"), pods=True
        ),
    }
    if ingress:
        out_spec["ingress"] = ingress
    if egress:
        out_spec["egress"] = egress
    out_spec["types"] = types
    out = {"apiVersion": API_VERSION, "kind": "NetworkPolicy", "metadata": out_meta}
    out["spec"] = out_spec
    return cast(Resource, out)


def namespace_profile(
    name: str,
    labels: Mapping[str, str] | None = None,
    *,
    uid: str | None = None,
    creation_timestamp: str | None = None,
) -> Resource:
    """The ``kns.<namespace>`` Profile Calico maintains for a Kubernetes namespace."""
    labels_to_apply = {f"{NAMESPACE_LABEL_PREFIX}{k}": v for k, v in (labels or {}).items()}
    labels_to_apply[f"{NAMESPACE_LABEL_PREFIX}{NAME_LABEL}"] = name
    meta: dict[str, Any] = {"name": f"{NAMESPACE_PROFILE_PREFIX}{name}"}
    if uid:
        meta["uid"] = uid
    if creation_timestamp:
        meta["creationTimestamp"] = creation_timestamp
    return cast(
        Resource,
        {
            "apiVersion": API_VERSION,
            "kind": "Profile",
            "metadata": meta,
            "spec": {
                "ingress": [dict(_ALLOW_ALL)],
                "egress": [dict(_ALLOW_ALL)],
                "labelsToApply": labels_to_apply,
            },
        },
    )
