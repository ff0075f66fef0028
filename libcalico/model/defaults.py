"""Calico's defaults, applied by ``validate`` before a resource is checked and stored.

These are the values Calico's client library fills in when a resource is created through it
(etcd mode), so a stored resource reads back the same way it does from Calico.
"""

from __future__ import annotations

from typing import Any

DEFAULT_NAMESPACE = "default"

# Tiers.
DEFAULT_TIER = "default"
KUBE_ADMIN_TIER = "kube-admin"
KUBE_BASELINE_TIER = "kube-baseline"
STATIC_TIER_ORDERS: dict[str, int] = {
    KUBE_ADMIN_TIER: 1_000,
    DEFAULT_TIER: 1_000_000,
    KUBE_BASELINE_TIER: 10_000_000,
}
STATIC_TIER_ACTIONS: dict[str, str] = {
    KUBE_ADMIN_TIER: "Pass",
    DEFAULT_TIER: "Deny",
    KUBE_BASELINE_TIER: "Pass",
}
DEFAULT_TIER_ACTION = "Deny"

# Labels Calico maintains on stored resources.
LABEL_TIER = "projectcalico.org/tier"
LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"

# IP pools.
IPV4_BLOCK_SIZE = 26
IPV6_BLOCK_SIZE = 122
DEFAULT_NODE_SELECTOR = "all()"
DEFAULT_ALLOWED_USES = ("Workload", "Tunnel")
DEFAULT_ENCAP_MODE = "Never"
DEFAULT_ASSIGNMENT_MODE = "Automatic"

# Kubernetes NetworkPolicy conversion.
K8S_POLICY_ORDER = 1000
K8S_POLICY_PREFIX = "knp.default."
NAMESPACE_PROFILE_PREFIX = "kns."
NAMESPACE_LABEL_PREFIX = "pcns."
NAME_LABEL = "projectcalico.org/name"


def default_policy_types(spec: dict[str, Any]) -> None:
    """Calico's rule for an empty ``types``: Ingress, unless only egress rules are present.

    No egress rules: [Ingress] (even with no ingress rules either). Egress rules only:
    [Egress]. Both: [Ingress, Egress].
    """
    if spec.get("types"):
        return
    if not spec.get("egress"):
        spec["types"] = ["Ingress"]
    elif not spec.get("ingress"):
        spec["types"] = ["Egress"]
    else:
        spec["types"] = ["Ingress", "Egress"]


def default_ippool(spec: dict[str, Any], ip_version: int) -> None:
    block_size = spec.get("blockSize")
    if block_size is None or (type(block_size) is int and block_size == 0):
        spec["blockSize"] = IPV4_BLOCK_SIZE if ip_version == 4 else IPV6_BLOCK_SIZE
    if not spec.get("nodeSelector"):
        spec["nodeSelector"] = DEFAULT_NODE_SELECTOR
    if not spec.get("ipipMode"):
        spec["ipipMode"] = DEFAULT_ENCAP_MODE
    if not spec.get("vxlanMode"):
        spec["vxlanMode"] = DEFAULT_ENCAP_MODE
    if not spec.get("allowedUses"):
        spec["allowedUses"] = list(DEFAULT_ALLOWED_USES)
    if not spec.get("assignmentMode"):
        spec["assignmentMode"] = DEFAULT_ASSIGNMENT_MODE
