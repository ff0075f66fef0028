"""Validation of policy kinds: rules, NetworkPolicy, GlobalNetworkPolicy, Profile and Tier.

Rule checks follow Calico's validator: actions and protocol names are case-sensitive, ports
need a protocol that has ports (TCP, UDP, SCTP), ICMP matches need an ICMP protocol and an ICMP
code needs a type, one rule cannot mix IPv4 and IPv6 CIDRs, ``global()`` only appears as a whole
``namespaceSelector``, and service matches exclude the other ways of naming a peer.
"""

from __future__ import annotations

from typing import Any

from libcalico.model.checks import (
    ICMP_PROTOCOLS,
    PORT_PROTOCOLS,
    Ctx,
    IPNetwork,
    as_bool,
    as_int,
    as_list,
    as_map,
    as_number,
    as_str,
    as_str_list,
    check_annotations,
    check_fields,
    check_labels,
    check_selector,
    drop_nulls,
    enum,
    join_path,
    one_of,
    parse_cidr,
    parse_port,
    parse_protocol,
    show,
)
from libcalico.model.defaults import (
    DEFAULT_TIER,
    DEFAULT_TIER_ACTION,
    LABEL_TIER,
    STATIC_TIER_ACTIONS,
    STATIC_TIER_ORDERS,
    default_policy_types,
)
from libcalico.model.names import is_dns1123_label

ACTIONS = ("Allow", "Deny", "Log", "Pass")
POLICY_TYPES = ("Ingress", "Egress")
PERFORMANCE_HINTS = ("AssumeNeededOnEveryNode",)
GLOBAL_SELECTOR = "global()"

RULE_FIELDS = frozenset(
    {"action", "ipVersion", "protocol", "notProtocol", "icmp", "notICMP", "source",
     "destination", "http", "metadata"}
)
ENTITY_FIELDS = frozenset(
    {"nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts",
     "serviceAccounts", "services"}
)
NETWORK_POLICY_FIELDS = frozenset(
    {"tier", "order", "selector", "serviceAccountSelector", "types", "ingress", "egress",
     "performanceHints"}
)
GLOBAL_NETWORK_POLICY_FIELDS = NETWORK_POLICY_FIELDS | {
    "namespaceSelector", "doNotTrack", "preDNAT", "applyOnForward"
}
PROFILE_FIELDS = frozenset({"ingress", "egress", "labelsToApply"})
TIER_FIELDS = frozenset({"order", "defaultAction"})


# --- rules -------------------------------------------------------------------------------------


def _icmp(ctx: Ctx, path: str, raw: Any) -> dict[str, Any]:
    icmp = drop_nulls(dict(as_map(ctx, path, raw)))
    check_fields(ctx, path, icmp, ("type", "code"))
    if "type" in icmp:
        icmp["type"] = as_int(ctx, join_path(path, "type"), icmp["type"], 0, 254)
    if "code" in icmp:
        icmp["code"] = as_int(ctx, join_path(path, "code"), icmp["code"], 0, 255)
        if "type" not in icmp:
            ctx.fail(join_path(path, "code"), "an ICMP code needs an ICMP type as well")
    return icmp


def _no_global(ctx: Ctx, path: str, selector: str) -> None:
    if GLOBAL_SELECTOR in selector:
        ctx.fail(path, f"{show(selector)}: global() can only be used as a namespaceSelector")


def _selector(ctx: Ctx, obj: dict[str, Any], path: str, key: str) -> None:
    if key in obj:
        check_selector(ctx, join_path(path, key), obj[key])


def _nets(ctx: Ctx, path: str, raw: Any) -> list[IPNetwork]:
    items = as_str_list(ctx, path, raw)
    return [parse_cidr(ctx, join_path(path, i), n, strict=True) for i, n in enumerate(items)]


def _ports(
    ctx: Ctx, path: str, raw: Any, protocol: int | str | None
) -> list[int | str]:
    items = as_list(ctx, path, raw)
    if items and protocol not in PORT_PROTOCOLS:
        got = f"protocol is {show(protocol)}" if protocol is not None else "no protocol is set"
        ctx.fail(path, f"ports need protocol TCP, UDP or SCTP ({got})")
    return [parse_port(ctx, join_path(path, i), p) for i, p in enumerate(items)]


def _entity(
    ctx: Ctx, path: str, raw: Any, protocol: int | str | None
) -> tuple[dict[str, Any], list[IPNetwork]]:
    ent = drop_nulls(dict(as_map(ctx, path, raw)))
    check_fields(ctx, path, ent, ENTITY_FIELDS)
    nets: list[IPNetwork] = []
    for key in ("nets", "notNets"):
        if key in ent:
            nets.extend(_nets(ctx, join_path(path, key), ent[key]))
    for key in ("ports", "notPorts"):
        if key in ent:
            ent[key] = _ports(ctx, join_path(path, key), ent[key], protocol)
    for key in ("selector", "notSelector", "namespaceSelector"):
        _selector(ctx, ent, path, key)
    if "selector" in ent:
        _no_global(ctx, join_path(path, "selector"), ent["selector"])
    ns_sel = ent.get("namespaceSelector", "")
    if "global(" in ns_sel and ns_sel.strip() != GLOBAL_SELECTOR:
        ctx.fail(
            join_path(path, "namespaceSelector"),
            f"{show(ns_sel)}: global() cannot be combined with other selectors",
        )
    if "serviceAccounts" in ent:
        sa_path = join_path(path, "serviceAccounts")
        sa = drop_nulls(dict(as_map(ctx, sa_path, ent["serviceAccounts"])))
        check_fields(ctx, sa_path, sa, ("names", "selector"))
        if "names" in sa:
            as_str_list(ctx, join_path(sa_path, "names"), sa["names"])
        _selector(ctx, sa, sa_path, "selector")
        ent["serviceAccounts"] = sa
    if "services" in ent:
        svc_path = join_path(path, "services")
        svc = drop_nulls(dict(as_map(ctx, svc_path, ent["services"])))
        check_fields(ctx, svc_path, svc, ("name", "namespace"))
        for key in ("name", "namespace"):
            if key in svc:
                as_str(ctx, join_path(svc_path, key), svc[key])
        if not svc.get("name"):
            ctx.fail(join_path(svc_path, "name"), "a service match needs a service name")
        for other, what in (
            ("namespaceSelector", "namespaceSelector"),
            ("selector", "selector or notSelector"),
            ("notSelector", "selector or notSelector"),
            ("serviceAccounts", "serviceAccounts"),
            ("nets", "nets or notNets"),
            ("notNets", "nets or notNets"),
        ):
            if ent.get(other):
                ctx.fail(svc_path, f"services cannot be combined with {what} in the same match")
        ent["services"] = svc
    return ent, nets


def _http(ctx: Ctx, path: str, raw: Any) -> dict[str, Any]:
    http = drop_nulls(dict(as_map(ctx, path, raw)))
    check_fields(ctx, path, http, ("methods", "paths"))
    if "methods" in http:
        methods = as_str_list(ctx, join_path(path, "methods"), http["methods"])
        if len(set(methods)) != len(methods):
            ctx.fail(join_path(path, "methods"), f"{show(methods)} lists a method twice")
    if "paths" in http:
        ppath = join_path(path, "paths")
        for i, raw_p in enumerate(as_list(ctx, ppath, http["paths"])):
            ip = join_path(ppath, i)
            p = as_map(ctx, ip, raw_p)
            check_fields(ctx, ip, p, ("exact", "prefix"))
            if p.get("exact") and p.get("prefix"):
                ctx.fail(ip, "set either exact or prefix, not both")
            key = "exact" if p.get("exact") else "prefix"
            value = as_str(ctx, join_path(ip, key), p.get(key, ""))
            if not value:
                ctx.fail(ip, "a path match needs exact or prefix")
            if not value.startswith("/") or any(c in value for c in "? #"):
                ctx.fail(
                    join_path(ip, key),
                    f"path {show(value)} must start with '/' and not contain '?', '#' or spaces",
                )
    return http


def validate_rule(ctx: Ctx, path: str, raw: Any, direction: str) -> dict[str, Any]:
    """One ingress or egress rule, normalised (ports and protocol numbers as Calico stores them)."""
    rule = drop_nulls(dict(as_map(ctx, path, raw)))
    check_fields(ctx, path, rule, RULE_FIELDS)
    if "action" not in rule:
        ctx.fail(join_path(path, "action"), f"a rule needs an action: one of {one_of(ACTIONS)}")
    action = as_str(ctx, join_path(path, "action"), rule["action"])
    if action not in ACTIONS:
        ctx.fail(
            join_path(path, "action"),
            f"{show(action)} is not one of {one_of(ACTIONS)} (actions are case-sensitive)",
        )
    if "ipVersion" in rule:
        rule["ipVersion"] = as_int(ctx, join_path(path, "ipVersion"), rule["ipVersion"])
        if rule["ipVersion"] not in (4, 6):
            ctx.fail(join_path(path, "ipVersion"), f"{rule['ipVersion']} is not 4 or 6")
    ip_version = rule.get("ipVersion")
    for key in ("protocol", "notProtocol"):
        if key in rule:
            rule[key] = parse_protocol(ctx, join_path(path, key), rule[key])
            proto = rule[key]
            want = 4 if proto in ("ICMP", 1) else 6 if proto in ("ICMPv6", 58) else None
            if want is not None and ip_version is not None and ip_version != want:
                ctx.fail(
                    join_path(path, "ipVersion"),
                    f"ipVersion {ip_version} does not match {key} {show(proto)} (needs {want})",
                )
    protocol = rule.get("protocol")
    for key in ("icmp", "notICMP"):
        if key in rule:
            rule[key] = _icmp(ctx, join_path(path, key), rule[key])
    if "icmp" in rule and protocol not in ICMP_PROTOCOLS:
        got = f"protocol is {show(protocol)}" if protocol is not None else "no protocol is set"
        ctx.fail(join_path(path, "icmp"), f"icmp matches need protocol ICMP or ICMPv6 ({got})")

    nets: list[tuple[str, list[IPNetwork]]] = []
    for side in ("source", "destination"):
        # Calico's stored rules always carry both sides, empty or not (Go marshals the structs).
        rule[side], side_nets = _entity(ctx, join_path(path, side), rule.get(side, {}), protocol)
        nets.append((join_path(path, side), side_nets))
    versions = {n.version for _, side_nets in nets for n in side_nets}
    if len(versions) > 1:
        ctx.fail(path, "a rule cannot mix IPv4 and IPv6 CIDRs")
    if ip_version is not None and versions and versions != {ip_version}:
        ctx.fail(
            join_path(path, "ipVersion"),
            f"ipVersion {ip_version} does not match the rule's IPv{versions.pop()} CIDRs",
        )
    dest = rule["destination"]
    if dest.get("services") and (dest.get("ports") or dest.get("notPorts")):
        ctx.fail(
            join_path(path, "destination.ports"),
            "ports cannot be combined with a destination service match (the service's ports"
            " are used)",
        )
    if direction == "egress" and rule["source"].get("services"):
        ctx.fail(join_path(path, "source.services"), "services are not allowed in an egress"
                 " rule's source")
    if direction == "ingress" and dest.get("services"):
        ctx.fail(join_path(path, "destination.services"), "services are not allowed in an"
                 " ingress rule's destination")

    if "http" in rule:
        rule["http"] = _http(ctx, join_path(path, "http"), rule["http"])
        if action != "Allow":
            ctx.fail(join_path(path, "http"), f"HTTP matches are only valid on Allow rules,"
                     f" not {action}")
        if direction == "egress":
            ctx.fail(join_path(path, "http"), "HTTP matches are not allowed in egress rules")
        if protocol is not None and protocol not in ("TCP", 6):
            ctx.fail(
                join_path(path, "protocol"),
                f"rules with HTTP matches need protocol TCP or none, not {show(protocol)}",
            )
    if "metadata" in rule:
        mpath = join_path(path, "metadata")
        meta = drop_nulls(dict(as_map(ctx, mpath, rule["metadata"])))
        check_fields(ctx, mpath, meta, ("annotations",))
        if "annotations" in meta:
            check_annotations(ctx, join_path(mpath, "annotations"), meta["annotations"])
        rule["metadata"] = meta
    return rule


def validate_rules(ctx: Ctx, spec: dict[str, Any]) -> None:
    for direction in ("ingress", "egress"):
        if direction in spec:
            path = join_path("spec", direction)
            rules = as_list(ctx, path, spec[direction])
            spec[direction] = [
                validate_rule(ctx, join_path(path, i), r, direction) for i, r in enumerate(rules)
            ]


# --- policies --------------------------------------------------------------------------------


def _policy_common(ctx: Ctx, res: dict[str, Any], spec: dict[str, Any]) -> None:
    tier = as_str(ctx, "spec.tier", spec.get("tier") or DEFAULT_TIER)
    if not is_dns1123_label(tier):
        ctx.fail("spec.tier", f"{show(tier)} is not a valid tier name (a DNS-1123 label)")
    spec["tier"] = tier
    if "order" in spec:
        spec["order"] = as_number(ctx, "spec.order", spec["order"])
    for key in ("selector", "serviceAccountSelector"):
        if key in spec:
            check_selector(ctx, join_path("spec", key), spec[key])
            _no_global(ctx, join_path("spec", key), spec[key])
    validate_rules(ctx, spec)
    if "types" in spec:
        as_list(ctx, "spec.types", spec["types"])
    default_policy_types(spec)
    seen: set[str] = set()
    for i, t in enumerate(spec["types"]):
        enum(ctx, f"spec.types[{i}]", t, POLICY_TYPES)
        if t in seen:
            ctx.fail("spec.types", f"{show(t)} is listed more than once")
        seen.add(t)
    if "performanceHints" in spec:
        hints = as_list(ctx, "spec.performanceHints", spec["performanceHints"])
        for i, h in enumerate(hints):
            enum(ctx, f"spec.performanceHints[{i}]", h, PERFORMANCE_HINTS)
    # Calico labels every policy with its tier so policies can be listed by tier.
    meta = res["metadata"]
    meta["labels"] = {**meta.get("labels", {}), LABEL_TIER: tier}


def validate_network_policy(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, NETWORK_POLICY_FIELDS)
    _policy_common(ctx, res, spec)


def validate_global_network_policy(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, GLOBAL_NETWORK_POLICY_FIELDS)
    if "namespaceSelector" in spec:
        check_selector(ctx, "spec.namespaceSelector", spec["namespaceSelector"])
        _no_global(ctx, "spec.namespaceSelector", spec["namespaceSelector"])
    for key in ("doNotTrack", "preDNAT", "applyOnForward"):
        if key in spec:
            as_bool(ctx, join_path("spec", key), spec[key])
    _policy_common(ctx, res, spec)
    do_not_track = spec.get("doNotTrack", False)
    pre_dnat = spec.get("preDNAT", False)
    if do_not_track and pre_dnat:
        ctx.fail("spec.preDNAT", "preDNAT and doNotTrack cannot both be true")
    if pre_dnat and spec.get("egress"):
        ctx.fail("spec.egress", "a preDNAT policy cannot have egress rules")
    if pre_dnat and "Egress" in spec["types"]:
        ctx.fail("spec.types", "a preDNAT policy cannot have type Egress")
    if (do_not_track or pre_dnat) and not spec.get("applyOnForward", False):
        ctx.fail("spec.applyOnForward", "must be true when preDNAT or doNotTrack is true")
    for direction, side in (("egress", "destination"), ("ingress", "source")):
        for i, rule in enumerate(spec.get(direction, [])):
            svc = rule.get(side, {}).get("services")
            if svc and not svc.get("namespace"):
                ctx.fail(
                    f"spec.{direction}[{i}].{side}.services.namespace",
                    "a service match in a global policy needs a namespace",
                )


def validate_profile(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    check_fields(ctx, "spec", spec, PROFILE_FIELDS)
    validate_rules(ctx, spec)
    if "labelsToApply" in spec:
        check_labels(ctx, "spec.labelsToApply", spec["labelsToApply"])


def validate_tier(ctx: Ctx, res: dict[str, Any]) -> None:
    spec = res["spec"]
    name = res["metadata"]["name"]
    check_fields(ctx, "spec", spec, TIER_FIELDS)
    if "order" in spec:
        spec["order"] = as_number(ctx, "spec.order", spec["order"])
    action = spec.get("defaultAction") or DEFAULT_TIER_ACTION
    spec["defaultAction"] = enum(ctx, "spec.defaultAction", action, ("Deny", "Pass"))
    if name in STATIC_TIER_ORDERS:
        want_order = STATIC_TIER_ORDERS[name]
        if spec.get("order") != want_order:
            got = show(spec["order"]) if "order" in spec else "unset"
            ctx.fail("spec.order", f"the {name} tier's order must be {want_order}, got {got}")
        want_action = STATIC_TIER_ACTIONS[name]
        if spec["defaultAction"] != want_action:
            ctx.fail(
                "spec.defaultAction",
                f"the {name} tier's defaultAction must be {want_action},"
                f" got {show(spec['defaultAction'])}",
            )
