"""Compact records the graph keeps for label-bearing objects, decoded once from Calico's v3 JSON.

The graph holds every workload endpoint in the cluster (250,000 at benchmark scale), so a record
keeps only what some stage needs: the label set it belongs to (labels are shared between
endpoints with equal labels, see ``label_index``), the addresses and named ports that feed IP
sets, the node, and the few fields of Felix's ``WorkloadEndpoint`` message. The v3 dict itself is
dropped.

Labels follow Felix's syncer conversion (libcalico-go ``updateprocessors``):

- WorkloadEndpoint: its own labels minus any ``pcns.``/``pcsa.`` prefixed ones (a workload must
  not pretend to be in another namespace), plus ``projectcalico.org/namespace``,
  ``projectcalico.org/orchestrator`` and, when set, ``projectcalico.org/serviceaccount``;
  parents are ``spec.profiles`` (``kns.<ns>``, ``ksa.<ns>.<sa>``) whose ``labelsToApply`` are
  inherited.
- NetworkSet: its labels plus ``projectcalico.org/namespace``; parent ``kns.<ns>``.
- GlobalNetworkSet, HostEndpoint: their labels; a HostEndpoint inherits from its profiles.

A WorkloadEndpoint without ``ipNetworks`` is treated as absent, as Felix does: rules cannot be
rendered for it yet.
"""

from __future__ import annotations

import ipaddress
import sys
from functools import lru_cache
from typing import Any

LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
NAMESPACE_LABEL_PREFIX = "pcns."
SERVICE_ACCOUNT_LABEL_PREFIX = "pcsa."
NAMESPACE_PROFILE_PREFIX = "kns."
SERVICE_ACCOUNT_PROFILE_PREFIX = "ksa."

# Endpoint keys: ("wep", namespace, name) and ("hep", "", name); network sets ("ns", ...).
ItemKey = tuple[str, str, str]
NamedPort = tuple[str, str, int]  # (name, protocol lower-case, port)

_EMPTY: tuple[Any, ...] = ()
_NO_LABELS: dict[str, str] = {}
_tuple_cache: dict[tuple[str, ...], tuple[str, ...]] = {}


def intern_tuple(values: tuple[str, ...]) -> tuple[str, ...]:
    """One shared tuple per distinct value: profile lists repeat across every pod of a namespace."""
    if not values:
        return _EMPTY
    cached = _tuple_cache.get(values)
    if cached is None:
        cached = tuple(sys.intern(v) for v in values)
        _tuple_cache[cached] = cached
    return cached


@lru_cache(maxsize=65536)
def _normalise_slow(text: str) -> str | None:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        return None


def normalise_net(text: str) -> str | None:
    """A CIDR in canonical form (network address, explicit prefix); bare IPs become /32 or /128.

    Workload addresses arrive as ``a.b.c.d/32`` already and take the fast path.
    """
    if text.endswith("/32") and ":" not in text and text.count(".") == 3:
        return text
    if "/" not in text:
        text = text + ("/128" if ":" in text else "/32")
    return _normalise_slow(text)


def _nets(values: Any) -> tuple[str, ...]:
    if not values:
        return _EMPTY
    out = []
    for v in values:
        n = normalise_net(v if isinstance(v, str) else str(v))
        if n is not None:
            out.append(n)
    return tuple(out)


def _addr(text: str) -> str:
    """Address part of a CIDR or IP string."""
    return text.split("/", 1)[0]


def _ports(values: Any) -> tuple[NamedPort, ...]:
    out = []
    for p in values or ():
        name = p.get("name")
        if not name or p.get("port") is None:
            continue  # unnamed ports only matter to the CNI plugin
        out.append((str(name), str(p.get("protocol") or "TCP").lower(), int(p["port"])))
    return tuple(out)


def _own_labels(metadata: dict[str, Any]) -> dict[str, str]:
    labels = metadata.get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


class Item:
    """A label-bearing object that can be an IP-set member: endpoint or network set."""

    __slots__ = ("key", "label_set", "nets", "ports")

    def __init__(self, key: ItemKey, nets: tuple[str, ...], ports: tuple[NamedPort, ...]):
        self.key = key
        self.nets = nets
        self.ports = ports
        self.label_set: Any = None  # label_index.LabelSet once indexed

    def named_port_members(self, name: str, protocol: str) -> list[str]:
        """``ip,proto:port`` members this item contributes to a named-port IP set."""
        out = []
        for pname, pproto, port in self.ports:
            if pname == name and pproto == protocol:
                for net in self.nets:
                    out.append(f"{_addr(net)},{protocol}:{port}")
        return out


class EndpointRecord(Item):
    """A workload or host endpoint, with what Felix's endpoint messages need."""

    __slots__ = (
        "allow_spoofed",
        "annotations",
        "expected_v4",
        "expected_v6",
        "iface",
        "ipv4_nat",
        "ipv6_nat",
        "kind",
        "mac",
        "node",
        "own_labels",
        "parents",
        "profile_ids",
        "wep_id",
    )

    def __init__(self, key: ItemKey, nets: tuple[str, ...], ports: tuple[NamedPort, ...]):
        self.key = key
        self.nets = nets
        self.ports = ports
        self.label_set = None
        self.kind = key[0]
        self.node = ""
        self.own_labels: dict[str, str] = _NO_LABELS
        self.parents: tuple[str, ...] = ()
        self.profile_ids: tuple[str, ...] = ()
        self.wep_id: tuple[str, str, str] = ("", "", "")
        self.iface = ""
        self.mac = ""
        self.ipv4_nat: tuple[tuple[str, str], ...] = ()
        self.ipv6_nat: tuple[tuple[str, str], ...] = ()
        self.allow_spoofed: tuple[str, ...] = ()
        self.annotations: dict[str, str] | None = None
        self.expected_v4: tuple[str, ...] = ()
        self.expected_v6: tuple[str, ...] = ()

    @property
    def ipv4_nets(self) -> list[str]:
        return [n for n in self.nets if ":" not in n]

    @property
    def ipv6_nets(self) -> list[str]:
        return [n for n in self.nets if ":" in n]


class NetworkSetRecord(Item):
    __slots__ = ("own_labels", "parents")

    def __init__(self, key: ItemKey, nets: tuple[str, ...]):
        super().__init__(key, nets, ())
        self.own_labels: dict[str, str] = {}
        self.parents: tuple[str, ...] = ()


_NO_DICT: dict[str, Any] = {}
_SYNTHETIC_PREFIXES = (NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX)


def workload_endpoint(namespace: str, name: str, value: dict[str, Any]) -> EndpointRecord | None:
    """Decode a WorkloadEndpoint; ``None`` when it has no addresses yet.

    The hot path of a resync (250,000 calls at benchmark scale), hence the plain code: values
    are Calico's validated JSON, so strings are used as they are.
    """
    spec = value.get("spec") or _NO_DICT
    nets = _nets(spec.get("ipNetworks"))
    if not nets:
        return None
    md = value.get("metadata") or _NO_DICT
    ports = spec.get("ports")
    rec = EndpointRecord(("wep", namespace, name), nets, _ports(ports) if ports else ())
    get = spec.get
    orchestrator = get("orchestrator") or "k8s"
    labels = md.get("labels")
    own = (
        {k: v for k, v in labels.items() if not k.startswith(_SYNTHETIC_PREFIXES)} if labels else {}
    )
    own[LABEL_NAMESPACE] = namespace
    own[LABEL_ORCHESTRATOR] = orchestrator
    sa = get("serviceAccountName")
    if sa:
        own[LABEL_SERVICE_ACCOUNT] = sa
    rec.own_labels = own
    rec.node = sys.intern(get("node") or "")
    profiles = get("profiles")
    rec.profile_ids = rec.parents = intern_tuple(tuple(profiles)) if profiles else ()
    pod = get("pod") or get("workload") or ""
    workload = f"{namespace}/{pod}" if orchestrator == "k8s" else (get("workload") or pod)
    rec.wep_id = (orchestrator, workload, get("endpoint") or "eth0")
    rec.iface = get("interfaceName") or ""
    rec.mac = get("mac") or ""
    nats = get("ipNATs")
    if nats:
        pairs = [(str(n.get("externalIP", "")), str(n.get("internalIP", ""))) for n in nats]
        rec.ipv4_nat = tuple(n for n in pairs if ":" not in n[1])
        rec.ipv6_nat = tuple(n for n in pairs if ":" in n[1])
    spoofed = get("allowSpoofedSourcePrefixes")
    if spoofed:
        rec.allow_spoofed = _nets(spoofed)
    annotations = md.get("annotations")
    if annotations:
        rec.annotations = dict(annotations)
    return rec


def host_endpoint(name: str, value: dict[str, Any]) -> EndpointRecord:
    spec = value.get("spec") or {}
    expected = [str(a) for a in spec.get("expectedIPs") or ()]
    rec = EndpointRecord(("hep", "", name), _nets(expected), _ports(spec.get("ports")))
    rec.own_labels = _own_labels(value.get("metadata") or {})
    rec.node = sys.intern(str(spec.get("node") or ""))
    rec.profile_ids = intern_tuple(tuple(str(p) for p in spec.get("profiles") or ()))
    rec.parents = rec.profile_ids
    rec.iface = str(spec.get("interfaceName") or "")
    rec.expected_v4 = tuple(a for a in expected if ":" not in a)
    rec.expected_v6 = tuple(a for a in expected if ":" in a)
    return rec


def network_set(namespace: str, name: str, value: dict[str, Any]) -> NetworkSetRecord:
    spec = value.get("spec") or {}
    kind = "netset" if namespace else "gnetset"
    rec = NetworkSetRecord((kind, namespace, name), _nets(spec.get("nets")))
    labels = _own_labels(value.get("metadata") or {})
    if namespace:
        labels[LABEL_NAMESPACE] = namespace
        rec.parents = intern_tuple((NAMESPACE_PROFILE_PREFIX + namespace,))
    rec.own_labels = labels
    return rec
