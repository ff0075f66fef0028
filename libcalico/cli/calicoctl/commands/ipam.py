"""``calicoctl ipam show|check|release|configure``, through the IPAM service.

Calico's calicoctl runs the IPAM library in-process against the datastore. Ours asks the IPAM
service (``services/ipam``) over gRPC, so the allocator, the check and the release rules
exist once -- in the service -- and calicoctl only formats what comes back. It never touches
the IPAM keys itself. The service is found from ``--ipam TARGET``, then ``$CALICO_IPAM``,
then the lab's socket ``unix:///run/calico-lab/sock/ipam.sock``.

What each command prints is Calico's output:

- ``show``: go-pretty box tables (``libcalico.cli.boxtable``) -- per pool (and with
  ``--show-blocks`` per block) ``GROUPING | CIDR | IPS TOTAL | IPS IN USE | IPS RESERVED |
  IPS FREE``, numbers as Go's ``%.5g`` and percentages of capacity as ``%.f%%``, numeric
  columns right-aligned; ``--show-borrowed`` ``IP | BORROWING-NODE | BLOCK | BLOCK OWNER |
  TYPE | ALLOCATED-TO``; ``--show-configuration`` ``PROPERTY | VALUE``; ``--ip`` whether the
  address is in use, its handle and attributes.
- ``check``: Calico's progress lines and counts, ``--show-problem-ips`` / ``--show-all-ips``
  detail, and with ``-o FILE`` the report JSON that ``release --from-report`` reads.
- ``release``: ``--ip`` releases one address; ``--from-report`` (repeatable) releases the
  leaks of the reports, with Calico's rules (same cluster, a report made after the datastore
  was locked, the datastore locked now unless ``--force``).
- ``configure``: sets StrictAffinity and/or MaxBlocksPerHost, leaving the rest as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from libcalico.cli.boxtable import box_table
from libcalico.cli.calicoctl.commands.common import CommandFailed, Connector, run_async
from libcalico.cli.calicoctl.config import normalise_target, unix_socket_path
from libcalico.errors import UnavailableError

T = TypeVar("T")

ENV_IPAM = "CALICO_IPAM"
LAB_IPAM_TARGET = "unix:///run/calico-lab/sock/ipam.sock"
IPAM_HINT = (
    "start the lab with 'calico-lab up', or point calicoctl at a running IPAM service with "
    "--ipam or CALICO_IPAM"
)
# Short calls, and the whole-cluster ones (check, release from a report) that read or write
# every block.
RPC_TIMEOUT_S = 10.0
LONG_RPC_TIMEOUT_S = 300.0
TOP_NODES = 20


@dataclass(frozen=True)
class IPAMTarget:
    target: str
    source: str  # "--ipam", "CALICO_IPAM" or "lab default", for messages


def ipam_target(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> IPAMTarget:
    env = os.environ if environ is None else environ
    flag = getattr(args, "ipam", None)
    if flag:
        return IPAMTarget(normalise_target(flag), "--ipam")
    if env.get(ENV_IPAM):
        return IPAMTarget(normalise_target(env[ENV_IPAM]), ENV_IPAM)
    return IPAMTarget(LAB_IPAM_TARGET, "lab default")


def unreachable(target: IPAMTarget, reason: str) -> CommandFailed:
    return CommandFailed(
        f"Failed to reach the IPAM service at {target.target} (from {target.source}): "
        f"{reason}; {IPAM_HINT}"
    )


# target -> async context manager yielding an IPAM stub (``ipam_pb2_grpc.IPAMStub`` or, in
# tests, anything with the same coroutine methods taking the same request messages).
IPAMConnector = Callable[[IPAMTarget], AbstractAsyncContextManager[Any]]


def connect_ipam(target: IPAMTarget) -> AbstractAsyncContextManager[Any]:
    """The real connector; a missing unix socket fails at once, before gRPC is loaded."""
    path = unix_socket_path(target.target)
    if path is not None and not os.path.exists(path):
        raise unreachable(target, f"socket {path} does not exist")
    return _stub(target)


@asynccontextmanager
async def _stub(target: IPAMTarget) -> AsyncIterator[Any]:
    from libcalico.api.ipam.v1 import ipam_pb2_grpc
    from libcalico.runtime import make_channel

    async with make_channel(target.target, service="IPAM service") as channel:
        yield ipam_pb2_grpc.IPAMStub(channel)


class _Client:
    """Every call bounded; an unreachable service is one line naming it and the way out."""

    def __init__(self, stub: Any, target: IPAMTarget) -> None:
        self.stub = stub
        self.target = target
        from libcalico.api.ipam.v1 import ipam_pb2

        self.pb = ipam_pb2

    async def call(self, method: str, request: Any, timeout: float = RPC_TIMEOUT_S) -> Any:
        try:
            return await asyncio.wait_for(getattr(self.stub, method)(request), timeout)
        except TimeoutError as exc:
            raise unreachable(self.target, f"no answer within {timeout:g}s") from exc
        except UnavailableError as exc:
            reason = exc.message
            prefix = f"cannot reach the IPAM service at {self.target.target}: "
            raise unreachable(self.target, reason.removeprefix(prefix)) from exc


def run(
    args: argparse.Namespace,
    out: TextIO,
    connector: Connector | None = None,
    ipam_connector: IPAMConnector | None = None,
) -> int:
    """Run ``calicoctl ipam <command>``. ``connector`` (the datastore's) is not used: every
    ipam command goes through the IPAM service, which owns the IPAM keys."""
    command = args.ipam_command
    handlers: dict[str, Callable[[argparse.Namespace, TextIO, _Client], Awaitable[int]]] = {
        "show": _show,
        "check": _check,
        "release": _release,
        "configure": _configure,
    }
    handler = handlers.get(command)
    if handler is None:
        raise CommandFailed(f"unknown ipam command: {command!r}")
    if command == "configure":
        _parse_configure(args)  # bad values fail before any connection
    if command == "release":
        _check_release_args(args)
    target = ipam_target(args)
    connect = ipam_connector or connect_ipam

    async def _main() -> int:
        async with connect(target) as stub:
            return await handler(args, out, _Client(stub, target))

    return run_async(_main())


# -- show -------------------------------------------------------------------------------------


def go_g5(n: float) -> str:
    """Go's ``%.5g`` (65536 -> ``65536``, 1048576 -> ``1.0486e+06``)."""
    return f"{n:.5g}"


def with_percentage(n: int, capacity: int) -> str:
    pct = f"{100 * n / capacity:.0f}" if capacity else "NaN"
    return f"{go_g5(n)} ({pct}%)"


UTILIZATION_HEADERS = ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS RESERVED", "IPS FREE"]


def utilization_table(pools: Sequence[Any], show_blocks: bool) -> str:
    """``ipam show [--show-blocks]`` from GetUtilization's pools."""
    rows: list[list[str]] = []

    def row(kind: str, cidr: str, capacity: int, in_use: int, reserved: int, free: int) -> None:
        rows.append([
            kind,
            cidr,
            go_g5(capacity),
            with_percentage(in_use, capacity),
            with_percentage(reserved, capacity),
            with_percentage(free, capacity),
        ])

    for p in pools:
        if p.cidr:  # the orphaned-blocks entry has no pool row
            row("IP Pool", p.cidr, p.capacity, p.in_use, p.reserved, p.free)
        if show_blocks:
            for b in p.blocks:
                row("Block", b.cidr, b.capacity, b.in_use, b.reserved, b.free)
    return box_table(UTILIZATION_HEADERS, rows, right=(2, 3, 4, 5))


BORROWED_HEADERS = ["IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "TYPE", "ALLOCATED-TO"]


def borrowed_text(resp: Any) -> str:
    rows = [
        [b.ip, b.borrowing_node, b.block, b.block_owner, b.type, b.allocated_to]
        for b in resp.borrowed
    ]
    text = box_table(BORROWED_HEADERS, rows) + "\n"
    if resp.unclassified:
        text += (
            f"\nNote: found {resp.unclassified} IP allocations without an explicit node "
            "association. Unable to determine if they are borrowed.\n"
        )
    return text


def config_table(cfg: Any) -> str:
    """``--show-configuration``: Calico prints its IPAMConfig struct's fields with ``%#v``."""
    rows = [
        ["StrictAffinity", "true" if cfg.strict_affinity else "false"],
        ["AutoAllocateBlocks", "true" if cfg.auto_allocate_blocks else "false"],
        ["MaxBlocksPerHost", str(cfg.max_blocks_per_host)],
    ]
    return box_table(["PROPERTY", "VALUE"], rows)


def ip_text(ip: str, attrs: Any) -> str:
    if not attrs.allocated:
        return f"{ip} is not assigned\n"
    lines = [f"IP {ip} is in use", f"Handle ID: {attrs.handle_id or '<none>'}"]
    if attrs.attributes:
        lines.append("Active Owner Attributes:")
        lines += [f"  {k}: {attrs.attributes[k]}" for k in sorted(attrs.attributes)]
    else:
        lines.append("No Active Owner attributes defined")
    return "\n".join(lines) + "\n"


def _valid_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise CommandFailed(f"Invalid IP address specified: {text}") from None


async def _show(args: argparse.Namespace, out: TextIO, client: _Client) -> int:
    pb = client.pb
    if args.ip:
        ip = _valid_ip(args.ip)
        attrs = await client.call(
            "GetAssignmentAttributes", pb.GetAssignmentAttributesRequest(ip=ip)
        )
        out.write(ip_text(ip, attrs))
    elif args.show_borrowed:
        out.write(borrowed_text(await client.call("GetBorrowedIPs", pb.GetBorrowedIPsRequest())))
    elif args.show_configuration:
        cfg = await client.call("GetConfig", pb.GetConfigRequest())
        out.write(config_table(cfg) + "\n")
    else:
        resp = await client.call("GetUtilization", pb.GetUtilizationRequest())
        out.write(utilization_table(resp.pools, args.show_blocks) + "\n")
    return 0


# -- check ------------------------------------------------------------------------------------


def _attr_string(a: Mapping[str, Any]) -> str:
    """Calico's ``Main:<handle> Extra:k=v,...`` for an allocation of the report."""
    extra = {
        "namespace": a.get("namespace"),
        "node": a.get("node"),
        "pod": a.get("pod"),
        "timestamp": a.get("creationTimestamp"),
        "type": a.get("type"),
    }
    kvs = ",".join(f"{k}={v}" for k, v in sorted(extra.items()) if v)
    return f"Main:{a.get('handle') or '<none>'} Extra:{kvs}"


def check_text(report: Mapping[str, Any], *, show_all: bool, show_problems: bool) -> str:
    """What ``calicoctl ipam check`` prints, from the service's report."""
    show_problems = show_problems or show_all
    s = report["summary"]
    allocations: Mapping[str, list[dict[str, Any]]] = report.get("allocations") or {}
    lines = ["Checking IPAM for inconsistencies...", "", "Loading all IPAM blocks..."]
    affinities: Mapping[str, str | None] = report.get("blockAffinities") or {}
    lines.append(f"Found {s['blocks']} IPAM blocks.")
    for cidr in sorted(affinities, key=_net_key):
        lines.append(f" IPAM block {cidr} affinity={affinities[cidr] or '<none>'}:")
    if show_all:
        for ip in sorted(allocations, key=_ip_key):
            for a in allocations[ip]:
                lines.append(f"  {ip} allocated; attrs {_attr_string(a)}")
    lines += [f"IPAM blocks record {s['allocations']} allocations.", ""]
    lines.append("Loading all IPAM pools...")
    lines += [f"  {cidr}" for cidr in report.get("activePools") or []]
    lines += [f"Found {s['activePools']} active IP pools.", ""]
    lines.append("Loading all nodes.")
    if show_all:
        lines += _owner_lines(allocations, report, "Node(")
    lines += [f"Found {s['nodeTunnelIPs']} node tunnel IPs.", ""]
    lines.append("Loading all workload endpoints.")
    if show_all:
        lines += _owner_lines(allocations, report, "Workload(")
    lines.append(f"Found {s['workloadIPs']} workload IPs.")
    lines += [f"Workloads and nodes are using {s['inUseIPs']} IPs.", ""]
    lines.append("Loading all handles")
    by_node: Mapping[str, int] = report.get("allocationsByNode") or {}
    lines.append(f"Looking for top (up to {TOP_NODES}) nodes by allocations...")
    ordered = sorted(by_node.items(), key=lambda kv: (-kv[1], kv[0]))
    for name, count in ordered[:TOP_NODES]:
        lines.append(f"  {name} has {count} allocations")
    if ordered:
        lines.append(
            f"Node with most allocations has {ordered[0][1]}; median is "
            f"{ordered[len(ordered) // 2][1]}"
        )
    lines.append("")
    lines.append("Scanning for IPs that are allocated but not actually in use...")
    leaked = [ip for ip, allocs in allocations.items() if not any(a["inUse"] for a in allocs)]
    if show_problems:
        for ip in sorted(leaked, key=_ip_key):
            for a in allocations[ip]:
                lines.append(f"  {ip} leaked; attrs {_attr_string(a)}")
    lines.append(
        f"Found {s['allocatedNotInUse']} IPs that are allocated in IPAM but not actually in use."
    )
    lines.append(
        "Scanning for IPs that are in use by a workload or node but not allocated in IPAM..."
    )
    if show_problems:
        for ip in report.get("multipleOwners") or []:
            lines.append(f"  {ip} has multiple owners.")
        for ip in report.get("notInActivePools") or []:
            lines.append(f"  {ip} in use is not in any active IP pool.")
        for ip in report.get("inUseButNotAllocated") or []:
            lines.append(f"  {ip} in use and in active IPAM pool but has no IPAM allocation.")
    lines.append(f"Found {s['inUseNotInActivePools']} in-use IPs that are not in active IP pools.")
    lines.append(
        f"Found {s['inUseNotAllocated']} in-use IPs that are in active IP pools but have no "
        "corresponding IPAM allocation."
    )
    lines.append("")
    lines.append("Scanning for IPAM handles with no matching IPs...")
    if show_all:
        for h in report.get("leakedHandles") or []:
            lines.append(f"  {h['ID']} doesn't have any active IPs.")
    lines.append(
        f"Found {s['handlesWithoutIPs']} handles with no matching IPs (and "
        f"{s['handlesWithIPs']} handles with matches)."
    )
    lines.append("Scanning for IPs with missing handle...")
    if show_problems:
        for h in report.get("missingHandles") or []:
            lines.append(f"  {h} is in use in a block but doesn't exist.")
    lines.append(
        f"Found {s['missingHandles']} handles mentioned in blocks with no matching handle "
        "resource."
    )
    lines.append(f"Check complete; found {s['problems']} problems.")
    return "\n".join(lines) + "\n"


def _owner_lines(
    allocations: Mapping[str, list[dict[str, Any]]], report: Mapping[str, Any], prefix: str
) -> list[str]:
    lines = []
    for ip in sorted(allocations, key=_ip_key):
        for a in allocations[ip]:
            owners = [o for o in a.get("owners") or [] if o.startswith(prefix)]
            lines += [f"  {ip} belongs to {o}" for o in owners]
    return lines


def _ip_key(ip: str) -> tuple[int, int]:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return (0, 0)
    return (addr.version, int(addr))


def _net_key(cidr: str) -> tuple[int, int]:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return (0, 0)
    return (net.version, int(net.network_address))


async def _check(args: argparse.Namespace, out: TextIO, client: _Client) -> int:
    resp = await client.call("CheckIPAM", client.pb.CheckIPAMRequest(), LONG_RPC_TIMEOUT_S)
    report = json.loads(resp.report_json)
    out.write(check_text(report, show_all=args.show_all_ips, show_problems=args.show_problem_ips))
    if args.output:
        text = json.dumps(report, indent=2) + "\n"
        try:
            await asyncio.to_thread(Path(args.output).write_text, text)
        except OSError as exc:
            raise CommandFailed(
                f"cannot write the report to {args.output}: {exc.strerror or exc}"
            ) from exc
    return 0


# -- release ----------------------------------------------------------------------------------


def _check_release_args(args: argparse.Namespace) -> None:
    if args.ip and args.from_report:
        raise CommandFailed("give either --ip or --from-report, not both")
    if not args.ip and not args.from_report:
        raise CommandFailed("one of --ip or --from-report is required")


async def _release(args: argparse.Namespace, out: TextIO, client: _Client) -> int:
    pb = client.pb
    if args.ip:
        ip = _valid_ip(args.ip)
        resp = await client.call("ReleaseIPs", pb.ReleaseIPsRequest(ips=[ip]))
        if resp.unallocated:
            raise CommandFailed(f"IP address {ip} is not assigned")
        out.write(f"Successfully released IP address {ip}\n")
        return 0
    reports = []
    for path in args.from_report:
        try:
            reports.append(await asyncio.to_thread(Path(path).read_bytes))
        except OSError as exc:
            raise CommandFailed(f"cannot read report {path}: {exc.strerror or exc}") from exc
    req = pb.ReleaseFromReportRequest(
        report_json=reports[0], more_reports=reports[1:], force=args.force
    )
    resp = await client.call("ReleaseFromReport", req, LONG_RPC_TIMEOUT_S)
    out.write(release_text(resp))
    return 0


def release_text(resp: Any) -> str:
    lines = [f"WARNING: {w}" for w in resp.warnings]
    if resp.leaked_in_report:
        lines.append(f"Releasing {resp.leaked_in_report} old IPs...")
        lines.append(f"Released {len(resp.released)} IPs successfully")
        if resp.skipped:
            lines.append(
                f"{len(resp.skipped)} addresses marked as leaked in the report had already "
                "been cleaned up."
            )
    else:
        lines.append("Report didn't contain any leaked IPs to clean up.")
    handles = len(resp.handles_deleted) + len(resp.handles_skipped)
    if handles:
        lines.append(f"Deleting {handles} handles...")
        lines.append(
            f"Released {len(resp.handles_deleted)} handles; {len(resp.handles_skipped)} "
            "skipped; 0 errors."
        )
    else:
        lines.append("Report didn't contain any handles to clean up.")
    lines.append("You may now unlock the data store.")
    return "\n".join(lines) + "\n"


# -- configure --------------------------------------------------------------------------------

_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_INT = re.compile(r"^[+-]?[0-9]+$")


def _parse_configure(args: argparse.Namespace) -> tuple[bool | None, int | None]:
    """The values as Calico parses them (Go's ``strconv.ParseBool`` / ``ParseInt(.., 32)``)."""
    strict: bool | None = None
    if args.strictaffinity:
        if args.strictaffinity in _GO_TRUE:
            strict = True
        elif args.strictaffinity in _GO_FALSE:
            strict = False
        else:
            raise CommandFailed("invalid value. Use true or false to set strictaffinity")
    max_blocks: int | None = None
    if args.max_blocks_per_host:
        text = args.max_blocks_per_host
        if not _INT.match(text) or not -(2**31) <= int(text) < 2**31:
            raise CommandFailed("invalid value for maxblockhost. Use a valid number")
        max_blocks = int(text)
    if strict is None and max_blocks is None:
        raise CommandFailed("at least one configuration option must be specified")
    return strict, max_blocks


async def _configure(args: argparse.Namespace, out: TextIO, client: _Client) -> int:
    strict, max_blocks = _parse_configure(args)
    req = client.pb.IPAMConfig()
    if strict is not None:
        req.strict_affinity = strict
    if max_blocks is not None:
        req.max_blocks_per_host = max_blocks
    await client.call("SetConfig", req)
    if strict is not None:
        out.write(f"Successfully set StrictAffinity to: {'true' if strict else 'false'}\n")
    if max_blocks is not None:
        out.write(f"Successfully set MaxBlocksPerHost to: {max_blocks}\n")
    return 0


__all__ = [
    "ENV_IPAM",
    "LAB_IPAM_TARGET",
    "IPAMConnector",
    "IPAMTarget",
    "check_text",
    "connect_ipam",
    "ipam_target",
    "run",
    "utilization_table",
]
