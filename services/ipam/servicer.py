"""gRPC IPAM servicer: protobuf in, domain calls, protobuf out. Nothing else lives here.

Domain errors propagate; the runtime's handler wrapping turns them into status codes
(ResourceExhaustedError → RESOURCE_EXHAUSTED, RetriesExhaustedError → ABORTED, ...).
"""

from __future__ import annotations

import json
from typing import Any

from libcalico.api.ipam.v1 import ipam_pb2 as pb
from libcalico.api.ipam.v1 import ipam_pb2_grpc as pb_grpc
from libcalico.errors import ValidationError
from services.ipam import check
from services.ipam.allocator import Allocator, AutoAssignArgs, ReleaseOptions
from services.ipam.blocks import IPAMConfig
from services.ipam.kvstore import ResourceStore
from services.ipam.pools import USE_LOAD_BALANCER, USE_TUNNEL, USE_WORKLOAD
from services.ipam.tunnels import KINDS, TunnelAddresses, TunnelKind

USES: dict[int, str] = {
    pb.WORKLOAD: USE_WORKLOAD,
    pb.TUNNEL: USE_TUNNEL,
    pb.LOAD_BALANCER: USE_LOAD_BALANCER,
}
TUNNEL_KINDS: dict[int, TunnelKind] = {
    pb.IPIP: KINDS["IPIP"],
    pb.VXLAN: KINDS["VXLAN"],
    pb.VXLAN_V6: KINDS["VXLAN_V6"],
}


def _tunnel(kind: int) -> TunnelKind:
    try:
        return TUNNEL_KINDS[kind]
    except KeyError:
        raise ValidationError(f"unknown tunnel kind {kind}") from None


class IPAMServicer(pb_grpc.IPAMServicer):
    def __init__(
        self, allocator: Allocator, tunnels: TunnelAddresses, resources: ResourceStore
    ) -> None:
        self.allocator = allocator
        self.tunnels = tunnels
        self.resources = resources

    async def AutoAssign(
        self, request: pb.AutoAssignRequest, context: Any
    ) -> pb.AutoAssignResponse:
        args = AutoAssignArgs(
            node=request.node,
            num4=request.num4,
            num6=request.num6,
            handle=request.handle_id or None,
            attrs=dict(request.attributes),
            ipv4_pools=list(request.ipv4_pools),
            ipv6_pools=list(request.ipv6_pools),
            use=USES.get(request.intended_use, USE_WORKLOAD),
            max_blocks_per_host=request.max_blocks_per_host,
        )
        result = await self.allocator.auto_assign(args)
        return pb.AutoAssignResponse(ipv4=result.ipv4, ipv6=result.ipv6)

    async def AssignIP(self, request: pb.AssignIPRequest, context: Any) -> pb.AssignIPResponse:
        ip = await self.allocator.assign_ip(
            request.ip, request.handle_id or None, dict(request.attributes), request.node
        )
        return pb.AssignIPResponse(ip=ip)

    async def ReleaseIPs(
        self, request: pb.ReleaseIPsRequest, context: Any
    ) -> pb.ReleaseIPsResponse:
        opts = [ReleaseOptions(ip) for ip in request.ips]
        opts += [
            ReleaseOptions(
                o.ip,
                o.handle_id or None,
                o.sequence_number if o.HasField("sequence_number") else None,
            )
            for o in request.options
        ]
        unallocated = await self.allocator.release_ips(opts)
        return pb.ReleaseIPsResponse(unallocated=unallocated)

    async def ReleaseByHandle(
        self, request: pb.ReleaseByHandleRequest, context: Any
    ) -> pb.ReleaseByHandleResponse:
        if not request.handle_id:
            raise ValidationError("handle_id is required")
        released = await self.allocator.release_by_handle(request.handle_id)
        return pb.ReleaseByHandleResponse(released=released)

    async def ClaimAffinity(
        self, request: pb.ClaimAffinityRequest, context: Any
    ) -> pb.ClaimAffinityResponse:
        claimed, failed = await self.allocator.claim_affinity(request.cidr, request.node)
        return pb.ClaimAffinityResponse(claimed=claimed, failed=failed)

    async def ReleaseAffinity(
        self, request: pb.ReleaseAffinityRequest, context: Any
    ) -> pb.ReleaseAffinityResponse:
        released = await self.allocator.release_affinity(request.node, request.cidr)
        return pb.ReleaseAffinityResponse(released=released)

    async def GetUtilization(
        self, request: pb.GetUtilizationRequest, context: Any
    ) -> pb.GetUtilizationResponse:
        pools = await self.allocator.utilization(list(request.pools))
        return pb.GetUtilizationResponse(
            pools=[
                pb.PoolUtilization(
                    name=p["name"],
                    cidr=p["cidr"],
                    capacity=p["capacity"],
                    in_use=p["in_use"],
                    reserved=p["reserved"],
                    free=p["free"],
                    blocks=[pb.BlockUtilization(**b) for b in p["blocks"]],
                )
                for p in pools
            ]
        )

    async def GetAssignmentAttributes(
        self, request: pb.GetAssignmentAttributesRequest, context: Any
    ) -> pb.GetAssignmentAttributesResponse:
        a = await self.allocator.get_assignment(request.ip)
        return pb.GetAssignmentAttributesResponse(
            allocated=a.allocated,
            handle_id=a.handle or "",
            attributes=a.attrs,
            block=a.block,
            block_affinity=a.block_affinity,
            sequence_number=a.sequence_number,
        )

    async def GetBorrowedIPs(
        self, request: pb.GetBorrowedIPsRequest, context: Any
    ) -> pb.GetBorrowedIPsResponse:
        rows, unclassified = await self.allocator.borrowed()
        return pb.GetBorrowedIPsResponse(
            borrowed=[pb.BorrowedIP(**r) for r in rows], unclassified=unclassified
        )

    async def GetConfig(self, request: pb.GetConfigRequest, context: Any) -> pb.IPAMConfig:
        cfg, _ = await self.allocator.get_config()
        return _config(cfg)

    async def SetConfig(self, request: pb.IPAMConfig, context: Any) -> pb.IPAMConfig:
        cfg = await self.allocator.set_config(
            strict_affinity=(
                request.strict_affinity if request.HasField("strict_affinity") else None
            ),
            auto_allocate_blocks=(
                request.auto_allocate_blocks if request.HasField("auto_allocate_blocks") else None
            ),
            max_blocks_per_host=(
                request.max_blocks_per_host if request.HasField("max_blocks_per_host") else None
            ),
        )
        return _config(cfg)

    async def EnsureTunnelAddress(
        self, request: pb.EnsureTunnelAddressRequest, context: Any
    ) -> pb.EnsureTunnelAddressResponse:
        addr = await self.tunnels.ensure(request.node, _tunnel(request.kind))
        return pb.EnsureTunnelAddressResponse(address=addr)

    async def ReleaseTunnelAddress(
        self, request: pb.ReleaseTunnelAddressRequest, context: Any
    ) -> pb.ReleaseTunnelAddressResponse:
        released = await self.tunnels.release(request.node, _tunnel(request.kind))
        return pb.ReleaseTunnelAddressResponse(released=released)

    async def CheckIPAM(self, request: pb.CheckIPAMRequest, context: Any) -> pb.CheckIPAMResponse:
        report = await check.check(self.allocator, self.resources)
        return pb.CheckIPAMResponse(
            report_json=json.dumps(report.data, indent=2).encode(), problems=report.problems
        )

    async def ReleaseFromReport(
        self, request: pb.ReleaseFromReportRequest, context: Any
    ) -> pb.ReleaseFromReportResponse:
        reports = []
        for raw in [request.report_json, *request.more_reports]:
            try:
                report = json.loads(raw)
            except ValueError as exc:
                raise ValidationError(f"the report is not JSON: {exc}") from exc
            if not isinstance(report, dict):
                raise ValidationError("the report is not a JSON object")
            reports.append(report)
        result = await check.release_from_report(
            self.allocator, self.resources, reports, force=request.force
        )
        return pb.ReleaseFromReportResponse(
            released=result.released,
            skipped=result.skipped,
            handles_deleted=result.handles_deleted,
            handles_skipped=result.handles_skipped,
            warnings=result.warnings,
            leaked_in_report=result.leaked_in_report,
        )


def _config(cfg: IPAMConfig) -> pb.IPAMConfig:
    return pb.IPAMConfig(
        strict_affinity=cfg.strict_affinity,
        auto_allocate_blocks=cfg.auto_allocate_blocks,
        max_blocks_per_host=cfg.max_blocks_per_host,
    )
