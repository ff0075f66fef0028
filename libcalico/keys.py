"""Every etcd key calico-py reads or writes, formatted and parsed here and nowhere else.

Layout (Calico's etcd v3 data model, ``libcalico-go/lib/backend/model``)::

    /calico/resources/v3/projectcalico.org/<plural>/<name>               cluster-scoped kinds
    /calico/resources/v3/projectcalico.org/<plural>/<namespace>/<name>   namespaced kinds
    /calico/ipam/v2/assignment/ipv4/block/10.65.79.0-26                  IPAM block
    /calico/ipam/v2/host/<node>/ipv4/block/10.65.79.0-26                 block affinity
    /calico/ipam/v2/handle/<handle id>                                   IPAM handle
    /calico/ipam/v2/config                                               IPAM configuration
    /calico/felix/v2/no-region/host/<node>/status                        Felix status report

A CIDR in a key is the network's canonical text with the ``/`` replaced by ``-``. Kinds map to
their plural through the registry in ``libcalico.model.kinds``. Prefixes end in ``/`` so a
prefix read of ``ippools/`` never picks up another kind or a longer namespace name.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from libcalico.errors import ValidationError
from libcalico.model.kinds import KINDS, KINDS_BY_PLURAL, KindInfo, lookup_kind

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOURCES_PREFIX = "/calico/resources/v3/projectcalico.org/"

IPAM_PREFIX = "/calico/ipam/v2/"
BLOCK_PREFIX = IPAM_PREFIX + "assignment/"
AFFINITY_PREFIX = IPAM_PREFIX + "host/"
HANDLE_PREFIX = IPAM_PREFIX + "handle/"
IPAM_CONFIG_KEY = IPAM_PREFIX + "config"

FELIX_PREFIX = "/calico/felix/v2/"
NO_REGION = "no-region"


class ResourceKey(NamedTuple):
    kind: str
    namespace: str | None
    name: str


class AffinityKey(NamedTuple):
    host: str
    cidr: IPNetwork


class FelixStatusKey(NamedTuple):
    host: str
    region: str


def _kind(kind: str) -> KindInfo:
    return KINDS.get(kind) or lookup_kind(kind)


def _segment(what: str, value: str) -> str:
    """A single path segment: non-empty and without '/'."""
    if not value or "/" in value:
        raise ValidationError(f"{what} '{value}' cannot be used in an etcd key", field=what)
    return value


# --- resources -----------------------------------------------------------------------------


def resource_key(kind: str, name: str, namespace: str | None = None) -> str:
    """The key of one resource. Namespaced kinds need a namespace; others must not have one."""
    info = _kind(kind)
    name = _segment("name", name)
    if info.namespaced:
        if not namespace:
            raise ValidationError(f"{info.kind} is namespaced: a namespace is required",
                                  field="namespace")
        return f"{RESOURCES_PREFIX}{info.plural}/{_segment('namespace', namespace)}/{name}"
    if namespace:
        raise ValidationError(f"{info.kind} is not namespaced: got namespace '{namespace}'",
                              field="namespace")
    return f"{RESOURCES_PREFIX}{info.plural}/{name}"


def resource_prefix(kind: str, namespace: str | None = None) -> str:
    """The prefix under which every resource of a kind (in one namespace, if given) lives."""
    info = _kind(kind)
    prefix = f"{RESOURCES_PREFIX}{info.plural}/"
    if namespace:
        if not info.namespaced:
            raise ValidationError(f"{info.kind} is not namespaced: got namespace '{namespace}'",
                                  field="namespace")
        prefix += _segment("namespace", namespace) + "/"
    return prefix


def parse_resource_key(key: str) -> ResourceKey | None:
    """The kind, namespace and name of a resource key, or None if it is not one of ours."""
    if not key.startswith(RESOURCES_PREFIX):
        return None
    parts = key[len(RESOURCES_PREFIX):].split("/")
    info = KINDS_BY_PLURAL.get(parts[0])
    if info is None or any(not p for p in parts):
        return None
    if info.namespaced and len(parts) == 3:
        return ResourceKey(info.kind, parts[1], parts[2])
    if not info.namespaced and len(parts) == 2:
        return ResourceKey(info.kind, None, parts[1])
    return None


# --- IPAM ------------------------------------------------------------------------------------


def _net(cidr: str | IPNetwork) -> IPNetwork:
    if isinstance(cidr, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return cidr
    try:
        return ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        raise ValidationError(f"'{cidr}' is not a block CIDR: {e}", field="cidr") from None


def _cidr_segment(net: IPNetwork) -> str:
    return f"ipv{net.version}/block/{net.network_address}-{net.prefixlen}"


def _parse_cidr_segment(version: str, text: str) -> IPNetwork | None:
    addr, dash, length = text.rpartition("-")
    if not dash or not length.isdigit() or version not in ("ipv4", "ipv6"):
        return None
    try:
        net = ipaddress.ip_network(f"{addr}/{length}", strict=True)
    except ValueError:
        return None
    if f"ipv{net.version}" != version or _cidr_segment(net).split("/")[-1] != text:
        return None  # only the canonical spelling is a key we would have written
    return net


def block_prefix(version: int | None = None) -> str:
    if version is None:
        return BLOCK_PREFIX
    if version not in (4, 6):
        raise ValidationError(f"IP version {version} is not 4 or 6", field="version")
    return f"{BLOCK_PREFIX}ipv{version}/block/"


def block_key(cidr: str | IPNetwork) -> str:
    """``/calico/ipam/v2/assignment/ipv4/block/10.65.79.0-26``."""
    return BLOCK_PREFIX + _cidr_segment(_net(cidr))


def parse_block_key(key: str) -> IPNetwork | None:
    if not key.startswith(BLOCK_PREFIX):
        return None
    parts = key[len(BLOCK_PREFIX):].split("/")
    if len(parts) != 3 or parts[1] != "block":
        return None
    return _parse_cidr_segment(parts[0], parts[2])


def affinity_prefix(host: str | None = None, version: int | None = None) -> str:
    """All affinities, one host's, or one host's for one IP version."""
    if host is None:
        if version is not None:
            raise ValueError("an affinity prefix by IP version needs a host")
        return AFFINITY_PREFIX
    prefix = f"{AFFINITY_PREFIX}{_segment('host', host)}/"
    if version is None:
        return prefix
    if version not in (4, 6):
        raise ValidationError(f"IP version {version} is not 4 or 6", field="version")
    return f"{prefix}ipv{version}/block/"


def affinity_key(host: str, cidr: str | IPNetwork) -> str:
    """``/calico/ipam/v2/host/<node>/ipv4/block/10.65.79.0-26``."""
    return f"{AFFINITY_PREFIX}{_segment('host', host)}/{_cidr_segment(_net(cidr))}"


def parse_affinity_key(key: str) -> AffinityKey | None:
    if not key.startswith(AFFINITY_PREFIX):
        return None
    parts = key[len(AFFINITY_PREFIX):].split("/")
    if len(parts) != 4 or not parts[0] or parts[2] != "block":
        return None
    net = _parse_cidr_segment(parts[1], parts[3])
    return AffinityKey(parts[0], net) if net is not None else None


def handle_key(handle_id: str) -> str:
    """``/calico/ipam/v2/handle/<handle id>``."""
    return HANDLE_PREFIX + _segment("handle", handle_id)


def parse_handle_key(key: str) -> str | None:
    if not key.startswith(HANDLE_PREFIX):
        return None
    handle = key[len(HANDLE_PREFIX):]
    return handle if handle and "/" not in handle else None


# --- Felix status ------------------------------------------------------------------------------


def felix_status_key(host: str, region: str = NO_REGION) -> str:
    """``/calico/felix/v2/no-region/host/<node>/status``."""
    return f"{FELIX_PREFIX}{_segment('region', region)}/host/{_segment('host', host)}/status"


def _escape_id(value: str) -> str:
    """Calico's escaping of an ID inside one key segment: ``/`` becomes ``%2f``."""
    if not value:
        raise ValidationError("an empty ID cannot be used in an etcd key", field="id")
    return value.replace("%", "%25").replace("/", "%2f")


def felix_host_prefix(host: str, region: str = NO_REGION) -> str:
    """``/calico/felix/v2/no-region/host/<node>/``: everything Felix reports for a node."""
    return f"{FELIX_PREFIX}{_segment('region', region)}/host/{_segment('host', host)}/"


def workload_endpoint_status_key(
    host: str, orchestrator: str, workload: str, endpoint: str, region: str = NO_REGION
) -> str:
    """``.../host/<node>/workload/<orchestrator>/<workload>/endpoint/<endpoint>`` as Felix
    writes a workload endpoint's status (``{"status": "up"}``), IDs escaped."""
    return (
        f"{felix_host_prefix(host, region)}workload/{_escape_id(orchestrator)}/"
        f"{_escape_id(workload)}/endpoint/{_escape_id(endpoint)}"
    )


def host_endpoint_status_key(host: str, endpoint: str, region: str = NO_REGION) -> str:
    """``.../host/<node>/endpoint/<endpoint>``: a host endpoint's status."""
    return f"{felix_host_prefix(host, region)}endpoint/{_escape_id(endpoint)}"


def parse_felix_status_key(key: str) -> FelixStatusKey | None:
    if not key.startswith(FELIX_PREFIX):
        return None
    parts = key[len(FELIX_PREFIX):].split("/")
    if len(parts) != 4 or parts[1] != "host" or parts[3] != "status" or not all(parts):
        return None
    return FelixStatusKey(parts[2], parts[0])
