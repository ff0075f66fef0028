"""The IPAM service for tests, the bench and the lab, and a load-generating allocator process.

- ``running_ipam(cfg)``: serve the real IPAM gRPC service (servicer, interceptors, health) in
  the current event loop; yields the ``IPAMGraph`` and the target.
- ``IPAMProcess(cfg_env)``: ``calico-ipam-service`` as a child process, waited for until its
  health check says SERVING, always stopped (SIGTERM, then SIGKILL).
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
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from libcalico import keys
from libcalico.testing.service_process import ServiceProcess
from services.ipam.allocator import Allocator, AutoAssignArgs, ResourceCache
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
