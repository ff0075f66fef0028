"""``validate(resource)``: check a ``projectcalico.org/v3`` resource and apply Calico's defaults.

The input is never modified: validation works on a deep copy, fills in what Calico's client
fills in on create (IP pool block size and modes, policy tier and types, tier labels, endpoint
labels and name), normalises values the way Calico's JSON round trip stores them (``"80"`` as
port 80, ``"1.10"`` as AS number 65546, IP pool CIDRs in canonical form) and returns the copy.

The first problem found raises ``ValidationError`` whose message names the resource
(``IPPool(default-ipv4-ippool)``), the field (``spec.blockSize``), the offending value and what
is allowed. Order of checks: envelope (apiVersion, kind), metadata (names, namespace, labels),
then the kind's spec validator in ``validate_policy``, ``validate_network`` or
``validate_config``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

from libcalico.errors import ValidationError
from libcalico.model.checks import (
    Ctx,
    as_map,
    as_str,
    check_annotations,
    check_fields,
    check_labels,
    drop_nulls,
    show,
)
from libcalico.model.defaults import DEFAULT_NAMESPACE
from libcalico.model.kinds import API_VERSION, KINDS
from libcalico.model.names import (
    DNS1123_LABEL_MAX,
    DNS1123_SUBDOMAIN_MAX,
    LABEL_FMT,
    SUBDOMAIN_FMT,
    is_dns1123_label,
    is_dns1123_subdomain,
)
from libcalico.model.types import Resource
from libcalico.model.validate_config import (
    validate_cluster_information,
    validate_felix_configuration,
    validate_kube_controllers_configuration,
)
from libcalico.model.validate_network import (
    validate_bgp_configuration,
    validate_bgp_peer,
    validate_global_network_set,
    validate_host_endpoint,
    validate_ippool,
    validate_ipreservation,
    validate_network_set,
    validate_node,
    validate_workload_endpoint,
)
from libcalico.model.validate_policy import (
    validate_global_network_policy,
    validate_network_policy,
    validate_profile,
    validate_tier,
)

Validator = Callable[[Ctx, dict[str, Any]], None]

VALIDATORS: dict[str, Validator] = {
    "IPPool": validate_ippool,
    "Node": validate_node,
    "WorkloadEndpoint": validate_workload_endpoint,
    "HostEndpoint": validate_host_endpoint,
    "Profile": validate_profile,
    "NetworkPolicy": validate_network_policy,
    "GlobalNetworkPolicy": validate_global_network_policy,
    "NetworkSet": validate_network_set,
    "GlobalNetworkSet": validate_global_network_set,
    "FelixConfiguration": validate_felix_configuration,
    "BGPConfiguration": validate_bgp_configuration,
    "BGPPeer": validate_bgp_peer,
    "IPReservation": validate_ipreservation,
    "Tier": validate_tier,
    "ClusterInformation": validate_cluster_information,
    "KubeControllersConfiguration": validate_kube_controllers_configuration,
}

TOP_LEVEL_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec"})
KINDS_WITH_STATUS = frozenset({"Node", "IPPool", "Tier", "KubeControllersConfiguration"})
METADATA_FIELDS = frozenset(
    {"name", "namespace", "labels", "annotations", "resourceVersion", "uid", "creationTimestamp",
     "generation", "generateName", "deletionTimestamp", "deletionGracePeriodSeconds",
     "ownerReferences", "finalizers", "managedFields", "selfLink"}
)

# NetworkPolicy: a DNS-1123 label, label.label, or a converted Kubernetes/OpenStack policy.
_NP_NAME_RE = re.compile(
    rf"^(({LABEL_FMT})(\.{LABEL_FMT})?|((?:knp|ossg)\.default\.({SUBDOMAIN_FMT})))$"
)
_GNP_NAME_RE = re.compile(rf"^({LABEL_FMT}\.)?{LABEL_FMT}$")
_SUBDOMAIN_MSG = "lowercase alphanumerics, '-' and '.', starting and ending alphanumeric"


def _check_name(ctx: Ctx, kind: str, name: str, spec: Mapping[str, Any]) -> None:
    field = "metadata.name"
    if len(name) > DNS1123_SUBDOMAIN_MAX:
        ctx.fail(field, f"name is {len(name)} characters, more than {DNS1123_SUBDOMAIN_MAX}")
    if kind == "Tier":
        if not is_dns1123_label(name):
            ctx.fail(
                field,
                f"{show(name)} is not a valid tier name: at most {DNS1123_LABEL_MAX} lowercase"
                " alphanumerics and '-', starting and ending alphanumeric (no dots)",
            )
    elif kind == "NetworkPolicy":
        if not _NP_NAME_RE.match(name):
            ctx.fail(
                field,
                f"{show(name)} is not a valid NetworkPolicy name: a DNS-1123 label with at"
                " most one '.' (lowercase alphanumerics and '-')",
            )
    elif kind == "GlobalNetworkPolicy":
        if not _GNP_NAME_RE.match(name):
            ctx.fail(
                field,
                f"{show(name)} is not a valid GlobalNetworkPolicy name: a DNS-1123 label with"
                " at most one '.' (lowercase alphanumerics and '-')",
            )
    elif kind in ("ClusterInformation", "KubeControllersConfiguration"):
        if name != "default":
            ctx.fail(field, f"{show(name)}: a {kind} must be named 'default'")
    elif kind in ("BGPConfiguration", "FelixConfiguration"):
        node = name[len("node."):] if name.startswith("node.") else None
        if node is not None:
            if not is_dns1123_subdomain(node):
                ctx.fail(field, f"{show(name)}: node.<name> must name a node ({_SUBDOMAIN_MSG})")
        elif name != "default":
            selector_scoped = kind == "FelixConfiguration" and "nodeSelector" in spec
            if not selector_scoped:
                ctx.fail(
                    field,
                    f"{show(name)}: a {kind} must be named 'default' (global) or"
                    " 'node.<nodename>' (one node)"
                    + (", or set spec.nodeSelector" if kind == "FelixConfiguration" else ""),
                )
            if not is_dns1123_subdomain(name):
                ctx.fail(field, f"{show(name)} is not a valid name ({_SUBDOMAIN_MSG})")
    elif not is_dns1123_subdomain(name):
        ctx.fail(field, f"{show(name)} is not a valid name ({_SUBDOMAIN_MSG})")


def validate(resource: Mapping[str, Any]) -> Resource:
    """A validated copy of ``resource`` with Calico's defaults applied."""
    if not isinstance(resource, Mapping):
        raise ValidationError(f"a resource must be a mapping, got {show(resource)}")
    kind = resource.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValidationError(
            f"unknown kind {show(kind)}; projectcalico.org/v3 kinds are: "
            + ", ".join(sorted(KINDS)),
            field="kind",
        )
    info = KINDS[kind]
    raw_meta = resource.get("metadata")
    meta_name = raw_meta.get("name") if isinstance(raw_meta, Mapping) else None
    meta_ns = raw_meta.get("namespace") if isinstance(raw_meta, Mapping) else None
    ctx = Ctx(
        kind,
        meta_name if isinstance(meta_name, str) else "",
        (meta_ns or DEFAULT_NAMESPACE) if info.namespaced and isinstance(meta_ns, str | None)
        else None,
    )
    if resource.get("apiVersion") != API_VERSION:
        ctx.fail("apiVersion", f"{show(resource.get('apiVersion'))} is not {API_VERSION}")

    res: dict[str, Any] = copy.deepcopy(dict(resource))
    allowed = TOP_LEVEL_FIELDS | ({"status"} if kind in KINDS_WITH_STATUS else set())
    check_fields(ctx, "", res, allowed)

    if res.get("metadata") is None:
        res["metadata"] = {}
    meta = drop_nulls(as_map(ctx, "metadata", res["metadata"]))
    check_fields(ctx, "metadata", meta, METADATA_FIELDS)
    if info.namespaced:
        ns = as_str(ctx, "metadata.namespace", meta.get("namespace") or DEFAULT_NAMESPACE)
        if not is_dns1123_label(ns):
            ctx.fail(
                "metadata.namespace",
                f"{show(ns)} is not a valid namespace (a DNS-1123 label: at most 63 lowercase"
                " alphanumerics and '-')",
            )
        meta["namespace"] = ns
    elif meta.get("namespace"):
        ctx.fail(
            "metadata.namespace",
            f"{kind} is not namespaced; remove namespace {show(meta['namespace'])}",
        )
    else:
        meta.pop("namespace", None)
    for key in ("resourceVersion", "uid", "creationTimestamp", "generateName"):
        if key in meta:
            as_str(ctx, f"metadata.{key}", meta[key])
    if "labels" in meta:
        check_labels(ctx, "metadata.labels", meta["labels"])
    if "annotations" in meta:
        check_annotations(ctx, "metadata.annotations", meta["annotations"])

    spec = res.get("spec")
    res["spec"] = spec = drop_nulls(as_map(ctx, "spec", {} if spec is None else spec))

    name = meta.get("name")
    if name is None or name == "":
        if kind != "WorkloadEndpoint":  # an endpoint's name is derived from its spec
            ctx.fail("metadata.name", f"a {kind} needs a name")
    else:
        _check_name(ctx, kind, as_str(ctx, "metadata.name", name), spec)

    VALIDATORS[kind](ctx, res)
    return cast(Resource, res)
