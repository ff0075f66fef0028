"""Names the policy compiler gives to chains, IP sets and nft objects, as Felix names them.

Chains all start with ``cali-`` and are at most 28 characters (iptables' limit, which Felix
also keeps in nftables mode so both flavours share names). A name whose suffix would overflow
becomes ``<prefix>_`` + base64url(SHA-256(suffix)) cut to fit; a suffix that already starts with
``_`` and exactly fits is hashed too, so a real name can never collide with a shortened one.

IP sets are ``cali4`` / ``cali6`` + the version token ``0`` + the set ID, cut to 31 characters
(the kernel's limit); temporary sets used for a rewrite are ``cali4t<n>`` / ``cali6t<n>``.
nftables set names are the same with ``:`` replaced by ``-``.
"""

from __future__ import annotations

import base64
import hashlib

MAX_CHAIN_NAME = 28
MAX_IPSET_NAME = 31
CHAIN_PREFIX = "cali-"

# Static chains (the same name may exist in several tables).
FILTER_INPUT = "cali-INPUT"
FILTER_FORWARD = "cali-FORWARD"
FILTER_OUTPUT = "cali-OUTPUT"
PREROUTING = "cali-PREROUTING"
POSTROUTING = "cali-POSTROUTING"
OUTPUT = "cali-OUTPUT"
FAILSAFE_IN = "cali-failsafe-in"
FAILSAFE_OUT = "cali-failsafe-out"
WL_TO_HOST = "cali-wl-to-host"
FROM_WL_DISPATCH = "cali-from-wl-dispatch"
TO_WL_DISPATCH = "cali-to-wl-dispatch"
FROM_HOST_ENDPOINT = "cali-from-host-endpoint"
TO_HOST_ENDPOINT = "cali-to-host-endpoint"
FROM_HEP_FORWARD = "cali-from-hep-forward"
TO_HEP_FORWARD = "cali-to-hep-forward"
CIDR_BLOCK = "cali-cidr-block"
NAT_OUTGOING = "cali-nat-outgoing"
FIP_DNAT = "cali-fip-dnat"
FIP_SNAT = "cali-fip-snat"
RPF_SKIP = "cali-rpf-skip"

# Per-endpoint chain prefixes.
WL_TO_PFX = "cali-tw-"
WL_FROM_PFX = "cali-fw-"
HOST_TO_PFX = "cali-th-"
HOST_FROM_PFX = "cali-fh-"
HOST_TO_FWD_PFX = "cali-thfw-"
HOST_FROM_FWD_PFX = "cali-fhfw-"

# Policy and profile chain prefixes.
POLICY_IN_PFX = "cali-pi-"
POLICY_OUT_PFX = "cali-po-"
PROFILE_IN_PFX = "cali-pri-"
PROFILE_OUT_PFX = "cali-pro-"

# nftables verdict maps behind the workload dispatch chains.
TO_WL_VMAP = "cali-tw-dispatch"
FROM_WL_VMAP = "cali-fw-dispatch"

# The interface name Felix uses for a host endpoint with interfaceName "*".
ALL_INTERFACES = "any-interface-at-all"

# Special IP-set IDs the compiler fills itself.
IPSET_MASQ_POOLS = "masq-ipam-pools"
IPSET_ALL_POOLS = "all-ipam-pools"
IPSET_ALL_HOSTS = "all-hosts-net"
IPSET_ALL_VXLAN = "all-vxlan-net"

KIND_SHORT = {
    "NetworkPolicy": "np",
    "GlobalNetworkPolicy": "gnp",
    "StagedNetworkPolicy": "snp",
    "StagedGlobalNetworkPolicy": "sgnp",
    "StagedKubernetesNetworkPolicy": "sknp",
    "KubernetesNetworkPolicy": "knp",
    "KubernetesClusterNetworkPolicy": "kcnp",
}
STAGED_KINDS = frozenset(
    {"StagedNetworkPolicy", "StagedGlobalNetworkPolicy", "StagedKubernetesNetworkPolicy",
     "snp", "sgnp", "sknp"}
)


def length_limited(prefix: str, suffix: str, max_len: int = MAX_CHAIN_NAME) -> str:
    """``prefix + suffix``, or ``prefix + "_" + hash`` when that would not fit (Felix's rule)."""
    total = len(prefix) + len(suffix)
    if total > max_len or (total == max_len and suffix.startswith("_")):
        digest = hashlib.sha256(suffix.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        return prefix + "_" + encoded[: max_len - 1 - len(prefix)]
    return prefix + suffix


def kind_short(kind: str, namespace: str) -> str:
    """Felix's short kind (np, gnp, knp…); an empty kind is inferred from the namespace."""
    if not kind:
        return "np" if namespace else "gnp"
    return KIND_SHORT.get(kind, kind)


def policy_id_string(kind: str, namespace: str, name: str) -> str:
    """``<kind-short>/<ns>/<name>`` or ``<kind-short>/<name>``: the suffix of a policy chain."""
    short = kind_short(kind, namespace)
    if namespace:
        return f"{short}/{namespace}/{name}"
    return f"{short}/{name}"


def policy_chain(prefix: str, kind: str, namespace: str, name: str) -> str:
    return length_limited(prefix, policy_id_string(kind, namespace, name))


def profile_chain(prefix: str, name: str) -> str:
    return length_limited(prefix, name)


def endpoint_chain(prefix: str, iface: str) -> str:
    return length_limited(prefix, iface)


def is_staged(kind: str) -> bool:
    return kind in STAGED_KINDS


def ipset_name(ip_version: int, set_id: str) -> str:
    """Main IP-set name: ``cali40<id>`` / ``cali60<id>`` cut to 31 characters."""
    return (f"cali{ip_version}0" + set_id)[:MAX_IPSET_NAME]


def temp_ipset_name(ip_version: int, n: int) -> str:
    return f"cali{ip_version}t{n}"


def nft_set_name(name: str) -> str:
    """nftables cannot take ``:`` in a set name; Felix writes ``-`` instead."""
    return name.replace(":", "-")
