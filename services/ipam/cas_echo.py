"""A service whose one RPC is one etcd compare-and-swap: the floor under ``bench/ipam.py``.

    CALICO_CAS_ECHO_LISTEN=unix:///tmp/x.sock CALICO_CAS_ECHO_ETCD=http://127.0.0.1:2379 \\
        python -m services.ipam.cas_echo

It runs exactly like ``calico-ipam-service`` (``run_main``, the runtime's ``Server`` with its
handler wrapping, spans and metrics, the same event loop and CPU affinity, which
``CALICO_CAS_ECHO_CPU_AFFINITY`` sets as ``CALICO_IPAM_CPU_AFFINITY`` does the service's).
Its handler does what an allocation into a cached affine block does on the wire -- one Txn
comparing a key's mod revision and putting a block-sized value, through ``EtcdKVStore`` --
and nothing else (the values' sizes come from ``CALICO_CAS_ECHO_VALUE_SIZES``, comma-separated
bytes used in turn, so the bench can match what its allocations write): no allocator, no
protobuf beyond the raw bytes. An AutoAssign can be no faster than this; the bench prints both
so the allocator's own cost and the cost of the two gRPC hops are told apart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import grpc
import grpc.aio

from libcalico.runtime import ServerSpec, run_main, serve, setup_logging, setup_tracing
from services.ipam.kvstore import EtcdKVStore, Put

SERVICE = "calicopy.bench.v1.CasEcho"
METHOD = f"/{SERVICE}/Cas"
KEY = "/bench/cas-echo"


class CasEcho:
    """Compare-and-swap ``KEY`` on each call, the revision known from the previous write."""

    def __init__(self, kv: EtcdKVStore, values: Sequence[bytes]) -> None:
        self.kv = kv
        self.values = values
        self.calls = 0
        self.revision = 0

    async def cas(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        value = self.values[self.calls % len(self.values)]
        self.calls += 1
        if not self.revision:
            self.revision = (await self.kv.txn([], [Put(KEY, value)])).revision
        res = await self.kv.txn([(KEY, self.revision)], [Put(KEY, value)])
        if not res.succeeded:  # another echo server on the same etcd: take its revision
            self.revision = res.current[0].mod_revision if res.current else 0
            return b"lost"
        self.revision = res.revision
        return b""

    def register(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(self.cas)  # bytes in, bytes out
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Cas": handler}),)
        )


async def amain() -> None:
    listen = os.environ["CALICO_CAS_ECHO_LISTEN"]
    etcd = os.environ["CALICO_CAS_ECHO_ETCD"]
    sizes = os.environ.get("CALICO_CAS_ECHO_VALUE_SIZES", "2048")
    values = [b"x" * int(size) for size in sizes.split(",")]
    cpu_affinity = os.environ.get("CALICO_CAS_ECHO_CPU_AFFINITY", "adaptive")
    setup_logging("cas-echo", os.environ.get("CALICO_CAS_ECHO_LOG_LEVEL", "WARNING"))
    setup_tracing("cas-echo")
    kv = EtcdKVStore.from_endpoint(etcd)
    echo = CasEcho(kv, values)
    try:
        await serve(ServerSpec(service="cas-echo", listen=[listen], register=echo.register,
                               service_names=[SERVICE], cpu_affinity=cpu_affinity))
    finally:
        await kv.close()


def main() -> None:
    run_main(amain)


if __name__ == "__main__":
    main()
