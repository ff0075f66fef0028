"""Sequential AutoAssign latency for each ``cpu_affinity`` shape, in interleaved rounds.

    python bench/ipam_affinity.py [--rounds 10] [--calls 400] [--json]

What ``libcalico.runtime.cpu_affinity`` is worth, measured so that a noisy minute lands on
every shape alike:

1. starts its own etcd and writes one IPv4 pool (assignmentMode Manual, /26 blocks);
2. starts the etcd-direct IPAM service once per shape: ``adaptive`` (the default), ``all``
   (the scheduler alone), and pinned to the first and to the last CPU this process may use;
   plus the CAS-echo floor (``services.ipam.cas_echo``, the same runtime doing one etcd CAS
   per call and nothing else, ``adaptive``). Each IPAM service's node claims a /16 of the pool
   first, so every allocation lands in an affine block: the case ``bench/ipam.py``'s target is
   about;
3. warms each up, then runs ``--rounds`` rounds. In each round every shape, in shuffled order,
   makes ``--calls`` sequential calls. A shape's figure is the median of its round means;
4. prints ms per call, ``all`` ÷ shape (above 1: faster than leaving it to the scheduler), and
   floor ÷ shape (1.0 would be an allocator that costs nothing), or one JSON object with
   ``--json``.

Everything started is stopped and the temp dir removed.
"""

from __future__ import annotations

# Before anything loads grpc: importing libcalico picks gRPC core's I/O engine for this
# process, as in every calico-py process (libcalico.grpc_engine).
import libcalico  # noqa: F401

# isort: split
import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc.aio

from libcalico.api.ipam.v1 import ipam_pb2 as pb
from libcalico.api.ipam.v1 import ipam_pb2_grpc as pb_grpc
from libcalico.etcd_server import EtcdServer
from libcalico.keys import resource_key
from libcalico.testing.service_process import ServiceProcess
from services.ipam import cas_echo
from services.ipam.kvstore import EtcdKVStore, Put
from services.ipam.testing import CasEchoProcess, IPAMProcess, allocation_block_values

POOL = "affinity-bench"
POOL_CIDR = "10.96.0.0/12"
FLOOR = "floor"

Call = Callable[[], Awaitable[None]]


def shapes() -> dict[str, str]:
    """Shape name -> ``CALICO_IPAM_CPU_AFFINITY``."""
    cpus = sorted(os.sched_getaffinity(0))
    out = {"adaptive": "adaptive", "all": "all"}
    for cpu in dict.fromkeys((cpus[0], cpus[-1])):
        out[f"cpu {cpu}"] = str(cpu)
    return out


async def start_ipam(work: Path, etcd: EtcdServer, index: int, affinity: str,
                     started: list[ServiceProcess]) -> Call:
    svc = IPAMProcess(work / f"ipam{index}.sock", etcd_endpoints=etcd.endpoint,
                      env={"CALICO_IPAM_CPU_AFFINITY": affinity})
    await svc.start()
    started.append(svc)
    stub = pb_grpc.IPAMStub(grpc.aio.insecure_channel(svc.target))
    node = f"bench-{index}"
    claimed = await stub.ClaimAffinity(
        pb.ClaimAffinityRequest(cidr=f"10.{96 + index}.0.0/16", node=node), timeout=30
    )
    if claimed.failed:
        raise RuntimeError(f"could not claim blocks for {node}: {claimed}")
    count = 0

    async def allocate() -> None:
        nonlocal count
        count += 1
        resp = await stub.AutoAssign(pb.AutoAssignRequest(
            num4=1, handle_id=f"k8s-pod-network.{node}-{count}", node=node,
            attributes={"node": node, "timestamp": "bench"}, ipv4_pools=[POOL],
        ), timeout=30)
        assert len(resp.ipv4) == 1

    return allocate


async def start_floor(work: Path, etcd: EtcdServer, started: list[ServiceProcess]) -> Call:
    # The sizes the allocations' block writes have (etcd's cost grows with the value).
    sizes = [len(v) for v in allocation_block_values("bench-0", "bench-0")]
    echo = CasEchoProcess(work / "echo.sock", etcd.endpoint, sizes)
    await echo.start()
    started.append(echo)
    call = grpc.aio.insecure_channel(echo.target).unary_unary(cas_echo.METHOD)

    async def cas() -> None:
        if await call(b"", timeout=30) != b"":
            raise RuntimeError("the CAS-echo service lost a race it cannot have")

    return cas


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="calico-bench-affinity-", dir="/tmp"))
    etcd = EtcdServer(work / "etcd")
    started: list[ServiceProcess] = []
    try:
        etcd.start()
        kv = EtcdKVStore.from_endpoint(etcd.endpoint)
        pool = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                "metadata": {"name": POOL},
                "spec": {"cidr": POOL_CIDR, "blockSize": 26, "assignmentMode": "Manual"}}
        await kv.txn([], [Put(resource_key("IPPool", POOL), json.dumps(pool).encode())])
        await kv.close()
        calls: dict[str, Call] = {}
        for index, (name, affinity) in enumerate(shapes().items()):
            calls[name] = await start_ipam(work, etcd, index, affinity, started)
        calls[FLOOR] = await start_floor(work, etcd, started)
        for call in calls.values():
            for _ in range(100):
                await call()
        means: dict[str, list[float]] = {name: [] for name in calls}
        order = list(calls)
        rng = random.Random(7)
        for _ in range(args.rounds):
            rng.shuffle(order)
            for name in order:
                call = calls[name]
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    await call()
                means[name].append((time.perf_counter() - t0) / args.calls * 1e3)
        ms = {name: statistics.median(values) for name, values in means.items()}
        return {
            "rounds": args.rounds,
            "calls": args.calls,
            "cpus": len(os.sched_getaffinity(0)),
            "ms_per_call": {name: round(v, 4) for name, v in ms.items()},
            "round_ms": {name: [round(v, 4) for v in values] for name, values in means.items()},
            "all_vs_shape": {name: round(ms["all"] / ms[name], 3) for name in ms if name != FLOOR},
            "floor_vs_shape": {
                name: round(ms[FLOOR] / ms[name], 3) for name in ms if name != FLOOR
            },
        }
    finally:
        for proc in reversed(started):
            proc.stop()
        etcd.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(r: dict[str, Any]) -> str:
    lines = [
        f"sequential AutoAssign into an affine block, etcd-direct service: {r['rounds']} "
        f"interleaved rounds of {r['calls']} calls per shape, {r['cpus']} CPUs",
        "",
        f"{'cpu_affinity':<22}{'ms/call':>9}{'all ÷ it':>10}{'floor ÷ it':>12}",
    ]
    for name, ms in r["ms_per_call"].items():
        if name == FLOOR:
            continue
        lines.append(f"{name:<22}{ms:>9.3f}{r['all_vs_shape'][name]:>10.2f}"
                     f"{r['floor_vs_shape'][name]:>12.2f}")
    lines.append(f"{'CAS-echo floor':<22}{r['ms_per_call'][FLOOR]:>9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=400, help="sequential calls per round")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
