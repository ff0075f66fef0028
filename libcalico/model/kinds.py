"""The kind registry: every ``projectcalico.org/v3`` kind we serve, and how calicoctl shows it.

Each :class:`KindInfo` holds the kind's plural (the etcd key segment, see ``libcalico.keys``),
whether it is namespaced, the names ``calicoctl`` accepts for it on the command line, and the
``-o ps`` / ``-o wide`` column sets with a function that renders one resource's cells exactly as
calicoctl's Go templates print them (Go's ``%v`` for booleans, numbers and nil pointers, lists
joined with ``,``, long CIDR lists cut at 80 characters with ``...``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from libcalico.errors import ValidationError

API_VERSION = "projectcalico.org/v3"
DEFAULT_AS_NUMBER = "64512"

Cells = Callable[[Mapping[str, Any], str], dict[str, str]]


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    namespaced: bool
    aliases: tuple[str, ...]
    ps_columns: tuple[str, ...]
    wide_columns: tuple[str, ...]
    render: Cells = field(repr=False, compare=False)

    def headings(self, *, wide: bool = False, all_namespaces: bool = False) -> tuple[str, ...]:
        """Default column headings; ``NAMESPACE`` leads when listing across namespaces."""
        cols = self.wide_columns if wide else self.ps_columns
        if all_namespaces and self.namespaced:
            return ("NAMESPACE", *cols)
        return cols

    def cells(
        self, resource: Mapping[str, Any], *, global_as_number: str = DEFAULT_AS_NUMBER
    ) -> dict[str, str]:
        """Every heading this kind knows (including ones only custom-columns asks for)."""
        return self.render(resource, global_as_number)

    def row(
        self,
        resource: Mapping[str, Any],
        headings: tuple[str, ...] | list[str],
        *,
        global_as_number: str = DEFAULT_AS_NUMBER,
    ) -> list[str]:
        """The cells for ``headings`` in order; an unknown heading is a ValidationError.

        ``global_as_number`` is what a Node without its own AS number shows, in brackets
        (the default BGPConfiguration's asNumber, or 64512 when there is none).
        """
        cells = self.cells(resource, global_as_number=global_as_number)
        out = []
        for h in headings:
            if h not in cells:
                raise ValidationError(
                    f"unknown heading '{h}' for {self.kind}; valid headings are: "
                    + ", ".join(sorted(cells)),
                    field="custom-columns",
                )
            out.append(cells[h])
        return out


# --- Go template value rendering -------------------------------------------------------------


def go_bool(value: Any) -> str:
    """A Go bool field: absent is false."""
    return "true" if value is True else "false"


def go_float(value: float | int) -> str:
    """Go's ``%v`` for a float64: shortest digits, exponent form from 1e+06 or below 1e-04."""
    if isinstance(value, bool):
        value = int(value)
    d = Decimal(repr(float(value)))
    if d.is_zero():
        return "0"
    sign, digits_t, exponent = d.normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(str(x) for x in digits_t)
    dp = len(digits) + exponent  # position of the decimal point relative to the digits
    exp10 = dp - 1
    neg = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        esign = "-" if exp10 < 0 else "+"
        return f"{neg}{mant}e{esign}{abs(exp10):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return f"{neg}{digits}{'0' * (dp - len(digits))}"
    return f"{neg}{digits[:dp]}.{digits[dp:]}"


def go_float_ptr(value: Any) -> str:
    """A Go ``*float64`` field printed by a template: ``<nil>`` when unset."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "<nil>"
    return go_float(value)


def go_bool_ptr(value: Any) -> str:
    if value is None:
        return "<nil>"
    return go_bool(value)


def go_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return go_bool(value)
    if isinstance(value, float):
        return go_float(value)
    return str(value)


def join(items: Any, sep: str = ",", max_len: int = 0) -> str:
    """calicoctl's ``join``/``joinAndTruncate``: maps become sorted ``k=v``; cut with ``...``."""
    if items is None:
        return ""
    if isinstance(items, Mapping):
        items = sorted(f"{k}={go_str(v)}" for k, v in items.items())
    elif not isinstance(items, list | tuple):
        items = [items]
    buf = ""
    for i, item in enumerate(items):
        if i:
            buf += sep
        buf += go_str(item)
        if max_len > 0 and len(buf) > max_len:
            return buf[: max_len - 3] + "..."
    return buf


def _spec(res: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = res.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _meta(res: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = res.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _base(res: Mapping[str, Any]) -> dict[str, str]:
    meta = _meta(res)
    return {"NAME": go_str(meta.get("name")), "NAMESPACE": go_str(meta.get("namespace"))}


# --- per-kind cells ---------------------------------------------------------------------------


def _ippool(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    s = _spec(res)
    return {
        **_base(res),
        "CIDR": go_str(s.get("cidr")),
        "NAT": go_bool(s.get("natOutgoing")),
        "IPIPMODE": go_str(s.get("ipipMode")) or "Never",
        "VXLANMODE": go_str(s.get("vxlanMode")) or "Never",
        "DISABLED": go_bool(s.get("disabled")),
        "DISABLEBGPEXPORT": go_bool(s.get("disableBGPExport")),
        "SELECTOR": go_str(s.get("nodeSelector")),
        "ASSIGNMENTMODE": go_str(s.get("assignmentMode")) or "Automatic",
    }


def _node(res: Mapping[str, Any], asn: str) -> dict[str, str]:
    bgp = _spec(res).get("bgp")
    cells = {**_base(res), "ASN": "", "IPV4": "", "IPV6": ""}
    if isinstance(bgp, Mapping):
        own = bgp.get("asNumber")
        cells["ASN"] = go_str(own) if own is not None else f"({asn})"
        cells["IPV4"] = go_str(bgp.get("ipv4Address"))
        cells["IPV6"] = go_str(bgp.get("ipv6Address"))
    return cells


def _bgppeer(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    s = _spec(res)
    node = go_str(s.get("node")) or go_str(s.get("nodeSelector")) or "(global)"
    return {
        **_base(res),
        "PEERIP": go_str(s.get("peerIP")),
        "NODE": node,
        "ASN": go_str(s.get("asNumber") or 0),
    }


def _bgpconfig(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    s = _spec(res)
    mesh = s.get("nodeToNodeMeshEnabled")
    asn = s.get("asNumber")
    return {
        **_base(res),
        "LOGSEVERITY": go_str(s.get("logSeverityScreen")),
        "MESHENABLED": "-" if mesh is None else go_bool(mesh),
        "ASNUMBER": "-" if asn is None else go_str(asn),
    }


def _ipnat(nat: Any) -> str:
    if isinstance(nat, Mapping):
        return "{" + go_str(nat.get("internalIP")) + " " + go_str(nat.get("externalIP")) + "}"
    return go_str(nat)


def _wep(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    s = _spec(res)
    nats = s.get("ipNATs")
    return {
        **_base(res),
        "NODE": go_str(s.get("node")),
        "ORCHESTRATOR": go_str(s.get("orchestrator")),
        "WORKLOAD": go_str(s.get("workload")) or go_str(s.get("pod")),
        "NETWORKS": join(s.get("ipNetworks")),
        "NATS": join([_ipnat(n) for n in nats] if isinstance(nats, list) else nats),
        "PROFILES": join(s.get("profiles")),
        "INTERFACE": go_str(s.get("interfaceName")),
    }


def _hep(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    s = _spec(res)
    return {
        **_base(res),
        "NODE": go_str(s.get("node")),
        "INTERFACE": go_str(s.get("interfaceName")),
        "IPS": join(s.get("expectedIPs")),
        "PROFILES": join(s.get("profiles")),
    }


def _profile(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    return {**_base(res), "LABELS": join(_spec(res).get("labelsToApply"))}


def _policy(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    s = _spec(res)
    return {
        **_base(res),
        "TIER": go_str(s.get("tier")),
        "ORDER": go_float_ptr(s.get("order")),
        "SELECTOR": go_str(s.get("selector")),
    }


def _netset(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    return {**_base(res), "NETS": join(_spec(res).get("nets"), ",", 80)}


def _name_only(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    return _base(res)


def _ipreservation(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    return {**_base(res), "CIDRS": join(_spec(res).get("reservedCIDRs"), ",", 80)}


def _tier(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    return {**_base(res), "ORDER": go_float_ptr(_spec(res).get("order"))}


def _clusterinfo(res: Mapping[str, Any], _asn: str) -> dict[str, str]:
    s = _spec(res)
    return {
        **_base(res),
        "CLUSTERGUID": go_str(s.get("clusterGUID")),
        "CLUSTERTYPE": go_str(s.get("clusterType")),
        "CALICOVERSION": go_str(s.get("calicoVersion")),
        "DATASTOREREADY": go_bool_ptr(s.get("datastoreReady")),
    }


def _cluster_scoped(res: Mapping[str, Any], cells: dict[str, str]) -> dict[str, str]:
    cells.pop("NAMESPACE", None)
    return cells


def _no_ns(fn: Cells) -> Cells:
    """calicoctl only offers NAMESPACE as a column for namespaced kinds."""

    def render(res: Mapping[str, Any], asn: str) -> dict[str, str]:
        return _cluster_scoped(res, fn(res, asn))

    return render


_DEFS: tuple[KindInfo, ...] = (
    KindInfo(
        "IPPool", "ippools", False,
        ("ippool", "ippools", "ipp", "ipps", "pool", "pools"),
        ("NAME", "CIDR", "SELECTOR"),
        ("NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT",
         "SELECTOR"),
        _no_ns(_ippool),
    ),
    KindInfo(
        "Node", "nodes", False,
        ("node", "nodes", "no", "nos"),
        ("NAME",),
        ("NAME", "ASN", "IPV4", "IPV6"),
        _no_ns(_node),
    ),
    KindInfo(
        "WorkloadEndpoint", "workloadendpoints", True,
        ("workloadendpoint", "workloadendpoints", "wep", "weps"),
        ("WORKLOAD", "NODE", "NETWORKS", "INTERFACE"),
        ("NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "PROFILES", "NATS"),
        _wep,
    ),
    KindInfo(
        "HostEndpoint", "hostendpoints", False,
        ("hostendpoint", "hostendpoints", "hep", "heps"),
        ("NAME", "NODE"),
        ("NAME", "NODE", "INTERFACE", "IPS", "PROFILES"),
        _no_ns(_hep),
    ),
    KindInfo(
        "Profile", "profiles", False,
        ("profile", "profiles", "pro", "pros"),
        ("NAME",),
        ("NAME", "LABELS"),
        _no_ns(_profile),
    ),
    KindInfo(
        "NetworkPolicy", "networkpolicies", True,
        ("networkpolicy", "networkpolicies", "policy", "np", "policies", "pol", "pols"),
        ("NAME", "TIER"),
        ("NAME", "TIER", "ORDER", "SELECTOR"),
        _policy,
    ),
    KindInfo(
        "GlobalNetworkPolicy", "globalnetworkpolicies", False,
        ("globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps"),
        ("NAME", "TIER"),
        ("NAME", "TIER", "ORDER", "SELECTOR"),
        _no_ns(_policy),
    ),
    KindInfo(
        "NetworkSet", "networksets", True,
        ("networkset", "networksets", "netsets"),
        ("NAME",),
        ("NAME", "NETS"),
        _netset,
    ),
    KindInfo(
        "GlobalNetworkSet", "globalnetworksets", False,
        ("globalnetworkset", "globalnetworksets", "gnetsets"),
        ("NAME",),
        ("NAME", "NETS"),
        _no_ns(_netset),
    ),
    KindInfo(
        "FelixConfiguration", "felixconfigurations", False,
        ("felixconfiguration", "felixconfigurations", "felixconfig", "felixconfigs"),
        ("NAME",),
        ("NAME",),
        _no_ns(_name_only),
    ),
    KindInfo(
        "BGPConfiguration", "bgpconfigurations", False,
        ("bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"),
        ("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"),
        ("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"),
        _no_ns(_bgpconfig),
    ),
    KindInfo(
        "BGPPeer", "bgppeers", False,
        ("bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps"),
        ("NAME", "PEERIP", "NODE", "ASN"),
        ("NAME", "PEERIP", "NODE", "ASN"),
        _no_ns(_bgppeer),
    ),
    KindInfo(
        "IPReservation", "ipreservations", False,
        ("ipreservation", "ipreservations", "reservation", "reservations"),
        ("NAME",),
        ("NAME", "CIDRS"),
        _no_ns(_ipreservation),
    ),
    KindInfo(
        "Tier", "tiers", False,
        ("tier", "tiers"),
        ("NAME", "ORDER"),
        ("NAME", "ORDER"),
        _no_ns(_tier),
    ),
    KindInfo(
        "ClusterInformation", "clusterinformations", False,
        ("clusterinformation", "clusterinformations", "clusterinfo", "clusterinfos"),
        ("NAME", "CLUSTERGUID", "CLUSTERTYPE", "CALICOVERSION", "DATASTOREREADY"),
        ("NAME", "CLUSTERGUID", "CLUSTERTYPE", "CALICOVERSION", "DATASTOREREADY"),
        _no_ns(_clusterinfo),
    ),
    KindInfo(
        "KubeControllersConfiguration", "kubecontrollersconfigurations", False,
        ("kubecontrollersconfiguration", "kubecontrollersconfigurations",
         "kubecontrollersconfig", "kubecontrollersconfigs"),
        ("NAME",),
        ("NAME",),
        _no_ns(_name_only),
    ),
)  # fmt: skip

KINDS: dict[str, KindInfo] = {k.kind: k for k in _DEFS}
KINDS_BY_PLURAL: dict[str, KindInfo] = {k.plural: k for k in _DEFS}
_BY_ALIAS: dict[str, KindInfo] = {a: k for k in _DEFS for a in k.aliases}


def lookup_kind(name_or_alias: str) -> KindInfo:
    """The kind named by a kind name or any calicoctl alias, case-insensitively."""
    info = KINDS.get(name_or_alias) or _BY_ALIAS.get(name_or_alias.lower())
    if info is None:
        raise ValidationError(f"resource type '{name_or_alias}' is not supported", field="kind")
    return info
