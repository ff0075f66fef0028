"""Calico's etcd keys for IPAM objects and the few resources IPAM reads.

Temporary home until ``libcalico.keys`` lands; the names and signatures match the ones the
architecture page promises there (``block_key(cidr)``, ``affinity_key(host, cidr)``,
``handle_key(handle_id)``, ``IPAM_CONFIG_KEY``, ``resource_key``), so switching is an import
change. Nothing else in ``services/ipam`` formats or parses a key.

Layout (Calico v3, etcd mode)::

    /calico/ipam/v2/assignment/ipv4/block/10.65.79.0-26          block
    /calico/ipam/v2/host/<node>/ipv4/block/10.65.79.0-26         affinity of <node> for it
    /calico/ipam/v2/handle/<handle id>                            handle
    /calico/ipam/v2/config                                        IPAM config
    /calico/resources/v3/projectcalico.org/<plural>/[<ns>/]<name> resources
"""

from __future__ import annotations

import ipaddress

IPAM_PREFIX = "/calico/ipam/v2/"
BLOCK_PREFIX = "/calico/ipam/v2/assignment/"
HOST_PREFIX = "/calico/ipam/v2/host/"
HANDLE_PREFIX = "/calico/ipam/v2/handle/"
IPAM_CONFIG_KEY = "/calico/ipam/v2/config"
RESOURCE_PREFIX = "/calico/resources/v3/projectcalico.org/"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PLURALS = {
    "IPPool": "ippools",
    "IPReservation": "ipreservations",
    "Node": "nodes",
    "WorkloadEndpoint": "workloadendpoints",
    "ClusterInformation": "clusterinformations",
}
NAMESPACED = {"WorkloadEndpoint"}


def _cidr_part(cidr: Network) -> str:
    return str(cidr).replace("/", "-", 1)


def block_prefix(version: int | None = None) -> str:
    return BLOCK_PREFIX if version is None else f"{BLOCK_PREFIX}ipv{version}/block/"


def block_key(cidr: Network) -> str:
    return f"{BLOCK_PREFIX}ipv{cidr.version}/block/{_cidr_part(cidr)}"


def parse_block_key(key: str) -> Network | None:
    if not key.startswith(BLOCK_PREFIX):
        return None
    parts = key[len(BLOCK_PREFIX) :].split("/")
    if len(parts) != 3 or parts[1] != "block":
        return None
    try:
        return ipaddress.ip_network(parts[2].replace("-", "/", 1))
    except ValueError:
        return None


def host_affinity_prefix(host: str, version: int | None = None) -> str:
    base = f"{HOST_PREFIX}{host}/"
    return base if version is None else f"{base}ipv{version}/block/"


def affinity_key(host: str, cidr: Network) -> str:
    return f"{HOST_PREFIX}{host}/ipv{cidr.version}/block/{_cidr_part(cidr)}"


def parse_affinity_key(key: str) -> tuple[str, Network] | None:
    if not key.startswith(HOST_PREFIX):
        return None
    parts = key[len(HOST_PREFIX) :].split("/")
    if len(parts) != 4 or parts[2] != "block":
        return None
    try:
        return parts[0], ipaddress.ip_network(parts[3].replace("-", "/", 1))
    except ValueError:
        return None


def handle_key(handle_id: str) -> str:
    return f"{HANDLE_PREFIX}{handle_id}"


def parse_handle_key(key: str) -> str | None:
    if not key.startswith(HANDLE_PREFIX):
        return None
    return key[len(HANDLE_PREFIX) :] or None


def resource_prefix(kind: str) -> str:
    return f"{RESOURCE_PREFIX}{PLURALS[kind]}/"


def resource_key(kind: str, name: str, namespace: str | None = None) -> str:
    if kind in NAMESPACED:
        return f"{resource_prefix(kind)}{namespace or 'default'}/{name}"
    return f"{resource_prefix(kind)}{name}"
