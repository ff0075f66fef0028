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
and its WEP written after the report was made, Calico insists the datastore was locked when
the report was generated; so do we, unless ``force``.
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
    for block in blocks:
        num_blocks += 1
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
    skipped: list[str] = field(default_factory=list)  # changed since the report
    handles_deleted: list[str] = field(default_factory=list)


async def release_from_report(
    allocator: Allocator,
    resources: ResourceStore,
    report: Mapping[str, Any],
    *,
    force: bool = False,
) -> ReleaseResult:
    """Release what ``report`` marks leaked (Calico's ``ReleaseFromReports`` rules).

    The report must come from this cluster (same clusterGUID, never overridable); unless
    ``force``, the datastore must be locked now (ClusterInformation datastoreReady false).
    """
    if "allocations" not in report:
        raise ValidationError("not an IPAM check report: it has no allocations")
    cluster_info = await resources.get("ClusterInformation", "default")
    spec = (cluster_info or {}).get("spec", {}) or {}
    guid = str(spec.get("clusterGUID", ""))
    if guid != str(report.get("clusterGUID", "")):
        raise FailedPreconditionError(
            "the report is from another cluster (clusterGUID differs); refusing to release"
        )
    if not force and spec.get("datastoreReady") is not False:
        raise FailedPreconditionError(
            "the datastore is not locked, so addresses the report calls leaked may have been "
            "taken since; lock the datastore, re-run 'calicoctl ipam check -o FILE', or pass "
            "--force"
        )
    out = ReleaseResult()
    for ip, allocs in sorted(report["allocations"].items()):
        for a in allocs:
            if a.get("inUse"):
                continue
            opt = ReleaseOptions(ip, a.get("handle") or None, a.get("sequenceNumber"))
            try:
                unallocated = await allocator.release_ips([opt])
            except ConflictError as exc:
                log.info("not releasing %s: %s", ip, exc)
                out.skipped.append(ip)
                continue
            if ip in unallocated:
                out.skipped.append(ip)
            else:
                out.released.append(ip)
    for h in report.get("leakedHandles") or []:
        hid = str(h.get("ID", ""))
        rev = int(h.get("Revision") or 0)
        if not hid or not rev:
            continue
        key = keys.handle_key(hid)
        result = await allocator.kv.txn([(key, rev)], [Delete(key)])
        if result.succeeded:
            out.handles_deleted.append(hid)
        else:
            out.skipped.append(f"handle {hid}")
    return out
