"""The bench's floor service (``services.ipam.cas_echo``) as a child process on real etcd."""

from __future__ import annotations

from pathlib import Path

import grpc.aio

from libcalico.etcd_server import EtcdServer
from services.ipam import cas_echo
from services.ipam.kvstore import EtcdKVStore
from services.ipam.testing import CasEchoProcess


async def test_each_call_is_one_compare_and_swap(etcd: EtcdServer, tmp_path: Path) -> None:
    proc = CasEchoProcess(tmp_path / "echo.sock", etcd.endpoint, [100, 200])
    kv = EtcdKVStore.from_endpoint(etcd.endpoint)
    try:
        async with proc, grpc.aio.insecure_channel(proc.target) as channel:
            call = channel.unary_unary(cas_echo.METHOD)
            assert await call(b"", timeout=10) == b""
            first = await kv.get(cas_echo.KEY)
            assert first is not None and first.value == b"x" * 100
            assert await call(b"", timeout=10) == b""
            second = await kv.get(cas_echo.KEY)
            assert second is not None and second.value == b"x" * 200  # the sizes in turn
            for _ in range(2):
                assert await call(b"", timeout=10) == b""
            last = await kv.get(cas_echo.KEY)
            assert last is not None and last.value == b"x" * 200
            # One write per call (the first call also created the key).
            assert last.mod_revision - first.mod_revision == 3
            assert last.create_revision == first.create_revision
    finally:
        await kv.close()
