"""The IPAM service for tests, the bench and the lab, and a load-generating allocator process.

- ``running_ipam(cfg)``: serve the real IPAM gRPC service (servicer, interceptors, health) in
  the current event loop; yields the ``IPAMGraph`` and the target.
- ``IPAMProcess(cfg_env)``: ``calico-ipam-service`` as a child process, waited for until its
  health check says SERVING, always stopped (SIGTERM, then SIGKILL).
- ``CasEchoProcess``: the benches' floor, ``services.ipam.cas_echo``, the same way; with
  ``allocation_block_values(node, tag)``, what its CAS should write to cost what an allocation does.
- ``python -m services.ipam.testing worker --etcd URL --node N --count K --prefix P``: one
  independent allocator (its own block cache) straight on etcd, taking ``count`` addresses
  one request at a time under handles ``<prefix>.<i>`` and printing ``<ip> <handle>`` per
  line as soon as each is committed. With ``--weps`` it also writes a WorkloadEndpoint per
  address, as the ``calico`` CNI plugin would, so ``ipam check`` sees them in use. Several of
  these on the same nodes race for the same blocks through etcd compare-and-swap, which is
  what the concurrency tests and the bench need; SIGKILL one and see what it leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from libcalico import keys
from libcalico.testing.service_process import ServiceProcess
from services.ipam.allocator import Allocator, AutoAssignArgs, ResourceCache
from services.ipam.blocks import Block
from services.ipam.config import IPAMServiceConfig
from services.ipam.kvstore import EtcdKVStore, KVResourceStore, Put
from services.ipam.main import IPAMGraph, build, server_spec


@asynccontextmanager
async def running_ipam(cfg: IPAMServiceConfig) -> AsyncIterator[tuple[IPAMGraph, str]]:
    """Serve IPAM in this loop on ``cfg.listen``; yields (graph, target)."""
    from libcalico.runtime.server import start_in_process

    graph = build(cfg)
    server = await start_in_process(server_spec(graph, cfg))
    try:
        yield graph, server.target
    finally:
        try:
            await server.stop(grace=0.5)
        finally:
            await graph.close()


class IPAMProcess(ServiceProcess):
    """``calico-ipam-service`` as a child process serving on ``unix://<socket_path>``."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        datastore: str = "",
        etcd_endpoints: str = "",
        env: Mapping[str, str] | None = None,
    ) -> None:
        target = f"unix://{Path(socket_path)}"
        super().__init__("calico-ipam-service", "services.ipam.main", socket_path, {
            "CALICO_IPAM_LISTEN": target,
            "CALICO_IPAM_LOG_LEVEL": "WARNING",
            **({"CALICO_IPAM_DATASTORE": datastore} if datastore else {}),
            **({"CALICO_IPAM_ETCD_ENDPOINTS": etcd_endpoints} if etcd_endpoints else {}),
            **(env or {}),
        })


class CasEchoProcess(ServiceProcess):
    """``services.ipam.cas_echo`` as a child process on ``unix://<socket_path>``: each call one
    CAS on ``etcd_endpoint`` writing values of ``value_sizes`` bytes in turn."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        etcd_endpoint: str,
        value_sizes: Sequence[int],
    ) -> None:
        super().__init__("calico-cas-echo", "services.ipam.cas_echo", socket_path, {
            "CALICO_CAS_ECHO_LISTEN": f"unix://{Path(socket_path)}",
            "CALICO_CAS_ECHO_ETCD": etcd_endpoint,
            "CALICO_CAS_ECHO_VALUE_SIZES": ",".join(str(size) for size in value_sizes),
        })


def allocation_block_values(node: str, tag: str) -> list[bytes]:
    """What allocating a /26 block's addresses one by one writes to it, in order: the block's
    JSON after its 1st, 2nd, ... 64th allocation, each under its own handle
    (``k8s-pod-network.<tag>-<i>``) with the attributes the benches' AutoAssigns carry
    (``node``, ``timestamp``)."""
    block = Block.new(ipaddress.ip_network("10.96.0.0/26"), node)
    values: list[bytes] = []
    for i in range(block.size):
        block.auto_assign(1, f"k8s-pod-network.{tag}-{i}", {"node": node, "timestamp": "bench"})
        values.append(block.to_json())
    return values


def wep(node: str, handle: str, ip: str) -> dict[str, object]:
    """The WorkloadEndpoint the ``calico`` plugin would write for a ``cni`` workload."""
    cid = handle.replace(".", "-").replace("_", "-")
    name = f"{node}-cni-{cid}-eth0"
    bits = 128 if ":" in ip else 32
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "orchestrator": "cni",
            "workload": cid,
            "node": node,
            "containerID": cid,
            "endpoint": "eth0",
            "interfaceName": f"cali{cid[:11]}",
            "ipNetworks": [f"{ip}/{bits}"],
        },
    }


async def worker(args: argparse.Namespace) -> int:
    kv = EtcdKVStore.from_endpoint(args.etcd)
    alloc = Allocator(kv, ResourceCache(KVResourceStore(kv), max_age=30.0))
    out = sys.stdout
    try:
        for i in range(args.count):
            handle = f"{args.prefix}.{i}"
            res = await alloc.auto_assign(
                AutoAssignArgs(node=args.node, num4=1, handle=handle, attrs={"node": args.node})
            )
            ip = res.ipv4[0].split("/", 1)[0]
            if args.weps:
                w = wep(args.node, handle, ip)
                meta = w["metadata"]
                assert isinstance(meta, dict)
                key = keys.resource_key("WorkloadEndpoint", meta["name"], meta["namespace"])
                await kv.txn([], [Put(key, json.dumps(w).encode())])
            out.write(f"{ip} {handle}\n")
            out.flush()
        stats = alloc.stats
        sys.stderr.write(json.dumps({"node": args.node, **stats}) + "\n")
        return 0
    finally:
        await kv.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ipam.testing")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="allocate addresses on one node straight on etcd")
    w.add_argument("--etcd", required=True)
    w.add_argument("--node", required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--prefix", required=True)
    w.add_argument("--weps", action="store_true")
    args = parser.parse_args(argv)
    return asyncio.run(worker(args))


if __name__ == "__main__":
    sys.exit(main())
