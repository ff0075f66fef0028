"""``calicoctl ipam check``: cross-check IPAM against the things that use addresses, and
``ipam release --from-report``: give back what the check found leaked.

The check (Calico's ``calicoctl/commands/ipam/check.go``) loads every block, handle, active
pool, Node (tunnel addresses) and WorkloadEndpoint (``ipNetworks``), then reports:

- allocated but not in use: an allocation no WEP or Node owns (a leak);
- in use but not allocated: an address a WEP or Node uses, inside an active pool, that IPAM
  does not have allocated (outside every active pool it is counted separately);
- handles with no addresses, and handles named by allocations that do not exist.

The report is Calico's JSON (``allocations`` keyed by IP, each with handle, sequence number,
node, pod, ``inUse``, ``borrowed``, ``owners``; ``leakedHandles``), plus a ``summary`` of the
counts and the problem lists ``inUseButNotAllocated`` / ``notInActivePools`` / ``missingHandles``.

Release from a report frees every allocation the report marks not in use, passing its handle
and sequence number so an address released and re-allocated since the report is left alone,
then deletes leaked handles at the revision the report saw. Because an address can be taken
and its WEP written after the report was made, Calico insists the datastore is locked and
that the report was made after it was locked (same ClusterInformation revision); so do we,
``force`` overriding only the first. Several reports release only the leaks common to all.

Everything here runs in the IPAM service (``CheckIPAM`` / ``ReleaseFromReport``);
``calicoctl ipam check|release`` only prints what comes back, so the logic exists once.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from libcalico import keys
from libcalico.errors import ConflictError, FailedPreconditionError, ValidationError
from services.ipam.allocator import Allocator, ReleaseOptions
from services.ipam.blocks import (
    ATTR_NAMESPACE,
    ATTR_NODE,
    ATTR_POD,
    ATTR_TIMESTAMP,
    ATTR_TYPE,
    Block,
    Handle,
)
from services.ipam.kvstore import Delete, Resource, ResourceStore
from services.ipam.pools import Pool

log = logging.getLogger(__name__)

REPORT_VERSION = "calico-py"


def _normalise(addr: str) -> str | None:
    try:
        return str(ipaddress.ip_interface(addr.strip()).ip)
    except ValueError:
        return None


def node_ips(node: Resource) -> list[str]:
    spec = node.get("spec", {}) or {}
    out = []
    for value in (
        spec.get("ipv4VXLANTunnelAddr"),
        spec.get("ipv6VXLANTunnelAddr"),
        (spec.get("wireguard") or {}).get("interfaceIPv4Address"),
        (spec.get("wireguard") or {}).get("interfaceIPv6Address"),
        (spec.get("bgp") or {}).get("ipv4IPIPTunnelAddr"),
    ):
        ip = _normalise(value) if value else None
        if ip:
            out.append(ip)
    return out


def wep_ips(wep: Resource) -> list[str]:
    nets = (wep.get("spec", {}) or {}).get("ipNetworks") or []
    return [ip for ip in (_normalise(str(n)) for n in nets) if ip]


@dataclass
class Report:
    data: dict[str, Any]

    @property
    def summary(self) -> dict[str, int]:
        s: dict[str, int] = self.data["summary"]
        return s

    @property
    def problems(self) -> int:
        return self.summary["problems"]


def build_report(
    blocks: Iterable[Block],
    handles: Mapping[str, tuple[Handle, int]],
    pools: Sequence[Pool],
    nodes: Iterable[Resource],
    weps: Iterable[Resource],
    cluster_info: Resource | None = None,
) -> Report:
    allocations: dict[str, list[dict[str, Any]]] = {}
    by_node: dict[str, int] = {}
    in_use_handles: set[str] = set()
    num_blocks = 0
    num_allocs = 0
    affinities: dict[str, str | None] = {}
    for block in blocks:
        num_blocks += 1
        affinities[str(block.cidr)] = block.affinity
        block_host = block.host
        for o in block.allocated_ordinals():
            num_allocs += 1
            ip = str(block.ordinal_to_ip(o))
            attr = block.attribute_of(o) or {}
            sec = attr.get("secondary") or {}
            handle = block.handle_of(o)
            node = str(sec.get(ATTR_NODE) or block_host)
            alloc: dict[str, Any] = {"ip": ip, "block": str(block.cidr)}
            if handle:
                alloc["handle"] = handle
                in_use_handles.add(handle)
            alloc["sequenceNumber"] = block.seq_of(o)
            for key, name in (
                (ATTR_POD, "pod"),
                (ATTR_NAMESPACE, "namespace"),
                (ATTR_TYPE, "type"),
                (ATTR_TIMESTAMP, "creationTimestamp"),
            ):
                if sec.get(key):
                    alloc[name] = str(sec[key])
            if node:
                alloc["node"] = node
            alloc["inUse"] = False
            if node != block_host:
                alloc["borrowed"] = True
            alloc["owners"] = []
            allocations.setdefault(ip, []).append(alloc)
            by_node[node] = by_node.get(node, 0) + 1

    in_use: dict[str, list[str]] = {}

    def record(ip: str, owner: str) -> None:
        in_use.setdefault(ip, []).append(owner)
        for a in allocations.get(ip, []):
            a["inUse"] = True
            a["owners"].append(owner)

    num_node_ips = 0
    for n in nodes:
        for ip in node_ips(n):
            num_node_ips += 1
            record(ip, f"Node({n.get('metadata', {}).get('name', '')})")
    num_wep_ips = 0
    for w in weps:
        meta = w.get("metadata", {}) or {}
        for ip in wep_ips(w):
            num_wep_ips += 1
            record(ip, f"Workload({meta.get('namespace', '')}/{meta.get('name', '')})")

    active = [p for p in pools if not p.disabled]
    leaked = sorted(ip for ip, allocs in allocations.items() if not any(a["inUse"] for a in allocs))
    not_allocated: list[str] = []
    non_calico: list[str] = []
    for ip in sorted(in_use):
        if ip in allocations:
            continue
        addr = ipaddress.ip_address(ip)
        if any(p.contains(addr) for p in active):
            not_allocated.append(ip)
        else:
            non_calico.append(ip)
    leaked_handles = [
        {"ID": hid, "Revision": str(rev)}
        for hid, (_, rev) in sorted(handles.items())
        if hid not in in_use_handles
    ]
    missing_handles = sorted(h for h in in_use_handles if h not in handles)
    multiple_owners = sorted(ip for ip, owners in in_use.items() if len(owners) > 1)
    problems = len(leaked) + len(not_allocated) + len(non_calico) + len(leaked_handles)
    spec = (cluster_info or {}).get("spec", {}) or {}
    data: dict[str, Any] = {
        "version": REPORT_VERSION,
        "clusterGUID": str(spec.get("clusterGUID", "")),
        "datastoreLocked": spec.get("datastoreReady") is False,
        "clusterInformationRevision": str(
            ((cluster_info or {}).get("metadata", {}) or {}).get("resourceVersion", "")
        ),
        "clusterType": str(spec.get("clusterType", "")),
        "allocations": allocations,
        "leakedHandles": leaked_handles,
        "inUseButNotAllocated": not_allocated,
        "notInActivePools": non_calico,
        "missingHandles": missing_handles,
        "multipleOwners": multiple_owners,
        "activePools": [str(p.cidr) for p in active],
        "blockAffinities": affinities,
        "allocationsByNode": dict(sorted(by_node.items(), key=lambda kv: (-kv[1], kv[0]))),
        "summary": {
            "blocks": num_blocks,
            "allocations": num_allocs,
            "activePools": len(active),
            "nodeTunnelIPs": num_node_ips,
            "workloadIPs": num_wep_ips,
            "inUseIPs": len(in_use),
            "allocatedNotInUse": len(leaked),
            "inUseNotInActivePools": len(non_calico),
            "inUseNotAllocated": len(not_allocated),
            "handles": len(handles),
            "handlesWithoutIPs": len(leaked_handles),
            "handlesWithIPs": len(handles) - len(leaked_handles),
            "missingHandles": len(missing_handles),
            "problems": problems,
        },
    }
    return Report(data)


async def check(allocator: Allocator, resources: ResourceStore) -> Report:
    cluster_info = await resources.get("ClusterInformation", "default")
    blocks, handles = await allocator.snapshot()
    pools = await allocator.resources.pools(fresh=True)
    nodes = await resources.list("Node")
    weps = await resources.list("WorkloadEndpoint")
    return build_report((b for b, _ in blocks), handles, pools, nodes, weps, cluster_info)


@dataclass
class ReleaseResult:
    released: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # addresses changed since the report
    handles_deleted: list[str] = field(default_factory=list)
    handles_skipped: list[str] = field(default_factory=list)  # handles changed since
    warnings: list[str] = field(default_factory=list)  # rules overridden by force
    leaked_in_report: int = 0


def _leaks(report: Mapping[str, Any]) -> dict[str, ReleaseOptions]:
    out: dict[str, ReleaseOptions] = {}
    for ip, allocs in (report.get("allocations") or {}).items():
        for a in allocs:
            if not a.get("inUse"):
                seq = a.get("sequenceNumber")
                out[str(ip)] = ReleaseOptions(
                    str(ip), a.get("handle") or None, int(seq) if seq is not None else None
                )
    return out


def _leaked_handles(report: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in report.get("leakedHandles") or []:
        hid, rev = str(h.get("ID", "")), int(h.get("Revision") or 0)
        if hid and rev:
            out[hid] = rev
    return out


def merge_reports(
    reports: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, ReleaseOptions], dict[str, int]]:
    """Leaks common to every report (Calico's ``mergeReports``).

    An address counts when every report calls it leaked with the same handle and sequence
    number (so it was not released and re-allocated in between); a handle when every report
    saw it leaked at the same revision. Reports made some time apart thus release only what
    stayed leaked the whole time.
    """
    ips = _leaks(reports[0])
    handles = _leaked_handles(reports[0])
    for report in reports[1:]:
        other = _leaks(report)
        ips = {ip: opt for ip, opt in ips.items() if other.get(ip) == opt}
        other_h = _leaked_handles(report)
        handles = {h: rev for h, rev in handles.items() if other_h.get(h) == rev}
    return ips, handles


async def release_from_report(
    allocator: Allocator,
    resources: ResourceStore,
    report: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    force: bool = False,
) -> ReleaseResult:
    """Release what ``report`` (or every one of several reports) marks leaked.

    Calico's ``ReleaseFromReports`` rules: every report must come from this cluster (same
    clusterGUID; never overridable); at least one must be current (made at the
    ClusterInformation revision the cluster has now, i.e. after the datastore was locked);
    and the datastore must be locked now (ClusterInformation ``datastoreReady: false``)
    unless ``force``, which turns that refusal into a warning.

    Each address is released with the handle and sequence number the report saw, so one
    released and handed out again since is skipped, not taken from its new owner; each
    leaked handle is deleted only at the revision the report saw.
    """
    reports = [report] if isinstance(report, Mapping) else list(report)
    if not reports:
        raise ValidationError("no report given")
    for r in reports:
        if not isinstance(r, Mapping) or "allocations" not in r:
            raise ValidationError("not an IPAM check report: it has no allocations")
    cluster_info = await resources.get("ClusterInformation", "default")
    spec = (cluster_info or {}).get("spec", {}) or {}
    guid = str(spec.get("clusterGUID", ""))
    revision = str(((cluster_info or {}).get("metadata", {}) or {}).get("resourceVersion", ""))
    for r in reports:
        if guid != str(r.get("clusterGUID", "")):
            raise FailedPreconditionError(
                "the report is from another cluster (clusterGUID differs); refusing to release"
            )
    if not any(str(r.get("clusterInformationRevision", "")) == revision for r in reports):
        raise FailedPreconditionError(
            "the reports are all stale: at least one must be made after the datastore was "
            "locked (its clusterInformationRevision is not the cluster's now); lock the "
            "datastore, run 'calicoctl ipam check -o FILE' again and release from that"
        )
    out = ReleaseResult()
    if spec.get("datastoreReady") is not False:
        if not force:
            raise FailedPreconditionError(
                "the datastore is not locked, so addresses the report calls leaked may have "
                "been taken since; lock the datastore, re-run 'calicoctl ipam check -o FILE', "
                "or pass --force"
            )
        out.warnings.append("Data store is not locked. Ignoring due to --force option")
    ips, handles = merge_reports(reports)
    out.leaked_in_report = len(ips)
    for ip, opt in sorted(ips.items()):
        try:
            unallocated = await allocator.release_ips([opt])
        except ConflictError as exc:
            log.info("not releasing %s: %s", ip, exc)
            out.skipped.append(ip)
            continue
        (out.skipped if ip in unallocated else out.released).append(ip)
    for hid, rev in sorted(handles.items()):
        key = keys.handle_key(hid)
        result = await allocator.kv.txn([(key, rev)], [Delete(key)])
        (out.handles_deleted if result.succeeded else out.handles_skipped).append(hid)
    return out
