"""gRPC ↔ domain for the policy compiler: one ``PolicyCompiler`` per ``Compile`` stream.

Protobuf in, ``PolicyCompiler.apply``/``full`` call, protobuf out; nothing else. Compiling a
large batch is CPU work, so it runs in the default executor: the event loop stays free for
health checks and other streams while one stream compiles (each stream's compiler is only ever
used by one call at a time, because a stream's requests are handled in order).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

import grpc

from libcalico.api.policy.v1 import policy_pb2 as pb
from libcalico.api.policy.v1 import policy_pb2_grpc as pb_grpc

from .compiler import FLAVORS, TABLES, CompileResult, KernelHook, PolicyCompiler
from .config import CompilerConfig
from .metrics import CHAINS_RENDERED, COMPILE_SECONDS, STREAMS


def result_pb(seq: int, result: CompileResult, hooks: list[KernelHook]) -> pb.CompileResponse:
    out = pb.CompileResponse(
        sequence_number=seq,
        full=result.full,
        ipset_restore=result.ipset_restore,
        ipset_destroy=result.ipset_destroy,
        nft_script=result.nft_script,
        warnings=result.warnings,
    )
    for v in (4, 6):
        for table in TABLES:
            delta = result.iptables.get((v, table))
            if delta is None:
                continue
            out.iptables.append(pb.TableChanges(
                ip_version=v,
                table=table,
                chains=[pb.Chain(name=n, rules=r) for n, r in delta.chains.items()],
                deleted=delta.deleted,
                restore_input=delta.restore_input(),
            ))
    out.hooks.extend(
        pb.KernelHook(ip_version=h.ip_version, table=h.table, chain=h.chain,
                      position=h.position, rule=h.rule)
        for h in hooks
    )
    return out


class PolicyServicer(pb_grpc.PolicyCompilerServicer):
    def __init__(self, base_config: CompilerConfig, felix_params: Mapping[str, str]) -> None:
        self._base = base_config.with_felix(felix_params) if felix_params else base_config

    async def Compile(
        self, request_iterator: AsyncIterator[pb.CompileRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CompileResponse]:
        compiler: PolicyCompiler | None = None
        loop = asyncio.get_running_loop()
        async for req in request_iterator:
            first = compiler is None
            if compiler is None:
                STREAMS.inc()
                cfg = self._base.with_felix(dict(req.config)) if req.config else self._base
                compiler = PolicyCompiler(cfg, flavors=list(req.flavors) or FLAVORS)
            result = await loop.run_in_executor(None, _compile, compiler, req)
            hooks = compiler.hooks() if first or req.full else []
            yield result_pb(req.sequence_number, result, hooks)


def _compile(compiler: PolicyCompiler, req: pb.CompileRequest) -> CompileResult:
    t = time.perf_counter()
    result = compiler.apply(req.messages)
    if req.full:
        result = compiler.full()
    COMPILE_SECONDS.labels("full" if req.full else "incremental").observe(time.perf_counter() - t)
    CHAINS_RENDERED.inc(sum(len(d.chains) for d in result.iptables.values()))
    return result
