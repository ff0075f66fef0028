"""The IPAM service over gRPC, the calico-ipam plugin as a runtime runs it, and independent
allocator processes racing on one real etcd.

The service runs in this event loop bound to the in-process datastore (``datastore`` fixture:
real gRPC on unix sockets, a wiped etcd per test). The plugin runs as a subprocess with
``CNI_*`` in its environment and the config on stdin. Allocator processes
(``python -m services.ipam.testing worker``) each keep their own block cache and go straight
to etcd, so two on the same node really race for the same block.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from libcalico import keys
from libcalico.api.ipam.v1 import ipam_pb2 as pb
from libcalico.api.ipam.v1 import ipam_pb2_grpc as pb_grpc
from libcalico.client import DatastoreClient
from libcalico.errors import ResourceExhaustedError, ValidationError
from libcalico.etcd_server import EtcdServer
from libcalico.runtime import make_channel
from libcalico.testing.datastore import short_socket_dir
from services.ipam import check
from services.ipam.allocator import Allocator, ResourceCache
from services.ipam.blocks import Block
from services.ipam.config import IPAMServiceConfig
from services.ipam.kvstore import Delete, EtcdKVStore, KVResourceStore, Put
from services.ipam.main import IPAMGraph
from services.ipam.testing import running_ipam
from tests.paths import CNI_EXAMPLES

EXAMPLE_CONF = CNI_EXAMPLES / "calico-ipam-pools.conf"
FULL_SIZE = int(os.environ.get("CALICO_IPAM_TEST_ADDRESSES", "4000"))


def ippool(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }


def node(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": name}, "spec": spec}


@pytest.fixture
async def ipam(datastore_target: str) -> AsyncIterator[tuple[IPAMGraph, str]]:
    sock_dir = short_socket_dir("calico-ipam-")
    cfg = IPAMServiceConfig(
        listen=(f"unix://{sock_dir / 'ipam.sock'}",), datastore=datastore_target,
        resource_cache_seconds=0.0,
    )
    try:
        async with running_ipam(cfg) as (graph, target):
            yield graph, target
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture
async def stub(ipam: tuple[IPAMGraph, str]) -> AsyncIterator[pb_grpc.IPAMStub]:
    """The IPAM stub through the runtime's channel: domain errors come back as classes."""
    async with make_channel(ipam[1], service="ipam") as channel:
        yield pb_grpc.IPAMStub(channel)


async def etcd_json(etcd: EtcdServer, key: str) -> Any:
    kv = EtcdKVStore.from_endpoint(etcd.endpoint)
    try:
        got = await kv.get(key)
        return None if got is None else json.loads(got.value)
    finally:
        await kv.close()


async def test_etcd_lists_page_past_grpc_message_limits(etcd: EtcdServer) -> None:
    """~10 MB under one prefix: more than gRPC's default 4 MiB message and than one page."""
    kv = EtcdKVStore.from_endpoint(etcd.endpoint)
    value = b"x" * 8192
    try:
        for start in range(0, 1200, 100):
            await kv.txn([], [Put(f"/test/page/{i:05d}", value)
                              for i in range(start, start + 100)])
        kvs, rev = await kv.list("/test/page/")
        assert [x.key for x in kvs] == [f"/test/page/{i:05d}" for i in range(1200)]
        assert all(x.value == value for x in kvs) and rev >= kvs[-1].mod_revision
        bare, _ = await kv.list("/test/page/", keys_only=True)
        assert [(x.key, x.mod_revision, x.value) for x in bare] == [
            (x.key, x.mod_revision, b"") for x in kvs]
    finally:
        for start in range(0, 1200, 100):
            await kv.txn([], [Delete(f"/test/page/{i:05d}") for i in range(start, start + 100)])
        await kv.close()


# -- the service --------------------------------------------------------------------------------


async def test_auto_assign_writes_calicos_keys_in_etcd(
    stub: pb_grpc.IPAMStub, datastore_client: DatastoreClient, etcd: EtcdServer
) -> None:
    await datastore_client.create(ippool("p4", "10.70.0.0/24"))
    await datastore_client.create(ippool("p6", "fd00:70::/120"))
    resp = await stub.AutoAssign(pb.AutoAssignRequest(
        num4=1, num6=1, handle_id="k8s-pod-network.c1", node="node-1",
        attributes={"node": "node-1"}))
    (ip4,), (ip6,) = resp.ipv4, resp.ipv6
    block4 = ipaddress.ip_interface(ip4).network
    assert block4.prefixlen == 26 and ipaddress.ip_interface(ip6).network.prefixlen == 122
    blk = await etcd_json(etcd, keys.block_key(block4))
    assert blk["affinity"] == "host:node-1"
    assert blk["attributes"] == [
        {"handle_id": "k8s-pod-network.c1", "secondary": {"node": "node-1"}}]
    assert await etcd_json(etcd, keys.affinity_key("node-1", block4)) == {
        "state": "confirmed", "deleted": False}
    handle = await etcd_json(etcd, keys.handle_key("k8s-pod-network.c1"))
    assert handle == {"block": {str(block4): 1, str(ipaddress.ip_interface(ip6).network): 1},
                      "deleted": False}
    attrs = await stub.GetAssignmentAttributes(
        pb.GetAssignmentAttributesRequest(ip=ip4.split("/")[0]))
    assert attrs.allocated and attrs.handle_id == "k8s-pod-network.c1"
    rel = await stub.ReleaseByHandle(pb.ReleaseByHandleRequest(handle_id="k8s-pod-network.c1"))
    assert sorted(rel.released) == sorted([ip4.split("/")[0], ip6.split("/")[0]])
    assert await etcd_json(etcd, keys.handle_key("k8s-pod-network.c1")) is None
    util = await stub.GetUtilization(pb.GetUtilizationRequest())
    assert [(p.name, p.capacity, p.in_use) for p in util.pools] == [
        ("p4", 256, 0), ("p6", 256, 0)]


async def test_exhaustion_is_resource_exhausted_naming_the_pools(
    ipam: tuple[IPAMGraph, str], stub: pb_grpc.IPAMStub, datastore_client: DatastoreClient
) -> None:
    await datastore_client.create(ippool("tiny-a", "10.71.0.0/30", blockSize=30))
    await datastore_client.create(ippool("tiny-b", "10.71.1.0/30", blockSize=30))
    req = pb.AutoAssignRequest(num4=9, handle_id="h", node="n")
    with pytest.raises(ResourceExhaustedError, match=r"tiny-a \(10\.71\.0\.0/30\), tiny-b"):
        await stub.AutoAssign(req)
    # Quickly, also when a real pool is full: 16 blocks claimed by one node, each full, and
    # another node asks (claim step finds nothing, borrow step finds nothing).
    await datastore_client.create(ippool("full", "10.71.4.0/22"))
    await stub.AutoAssign(pb.AutoAssignRequest(num4=1024, handle_id="all", node="hog",
                                               ipv4_pools=["full"]))
    for node_name in ("hog", "other"):
        started = time.monotonic()
        with pytest.raises(ResourceExhaustedError, match=r"full \(10\.71\.4\.0/22\)"):
            await stub.AutoAssign(pb.AutoAssignRequest(num4=1, handle_id="x", node=node_name,
                                                       ipv4_pools=["full"]))
        assert time.monotonic() - started < 1.0  # ~15 ms here; the bound allows a slow CI
    async with grpc.aio.insecure_channel(ipam[1]) as channel:  # what any client sees
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.IPAMStub(channel).AutoAssign(req)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tiny-a" in (err.value.details() or "")


async def test_strict_affinity_and_block_limit(
    stub: pb_grpc.IPAMStub, datastore_client: DatastoreClient
) -> None:
    await datastore_client.create(ippool("one-block", "10.72.0.0/26"))
    await stub.AutoAssign(pb.AutoAssignRequest(num4=1, handle_id="a", node="owner"))
    await stub.SetConfig(pb.IPAMConfig(strict_affinity=True, auto_allocate_blocks=True))
    with pytest.raises(ResourceExhaustedError, match="StrictAffinity is true"):
        await stub.AutoAssign(pb.AutoAssignRequest(num4=1, handle_id="b", node="other"))
    await stub.SetConfig(pb.IPAMConfig(strict_affinity=False, auto_allocate_blocks=True))
    borrowed = await stub.AutoAssign(pb.AutoAssignRequest(num4=1, handle_id="b", node="other"))
    assert borrowed.ipv4[0].startswith("10.72.0.")

    await datastore_client.create(ippool("big", "10.73.0.0/24", blockSize=28))
    with pytest.raises(ValidationError, match="requires StrictAffinity"):
        await stub.SetConfig(pb.IPAMConfig(max_blocks_per_host=1))
    await stub.SetConfig(pb.IPAMConfig(strict_affinity=True, max_blocks_per_host=1))
    cfg = await stub.GetConfig(pb.GetConfigRequest())
    assert (cfg.max_blocks_per_host, cfg.strict_affinity, cfg.auto_allocate_blocks) == (
        1, True, True)
    await stub.AutoAssign(
        pb.AutoAssignRequest(num4=16, handle_id="c", node="n", ipv4_pools=["big"]))
    with pytest.raises(ResourceExhaustedError, match=r"MaxBlocksPerHost\) is 1"):
        await stub.AutoAssign(pb.AutoAssignRequest(num4=1, handle_id="d", node="n",
                                                   ipv4_pools=["big"]))


async def test_tunnel_address_is_written_to_the_node(
    stub: pb_grpc.IPAMStub, datastore_client: DatastoreClient
) -> None:
    await datastore_client.create(ippool("ipip", "10.74.0.0/24", ipipMode="Always"))
    await datastore_client.create(node("node-1", bgp={"ipv4Address": "192.0.2.1/24"}))
    got = await stub.EnsureTunnelAddress(pb.EnsureTunnelAddressRequest(node="node-1",
                                                                      kind=pb.IPIP))
    assert got.address.startswith("10.74.0.")
    n = await datastore_client.get("Node", "node-1")
    assert n["spec"]["bgp"]["ipv4IPIPTunnelAddr"] == got.address
    again = await stub.EnsureTunnelAddress(pb.EnsureTunnelAddressRequest(node="node-1",
                                                                        kind=pb.IPIP))
    assert again.address == got.address
    rel = await stub.ReleaseTunnelAddress(pb.ReleaseTunnelAddressRequest(node="node-1",
                                                                        kind=pb.IPIP))
    assert rel.released == got.address
    n = await datastore_client.get("Node", "node-1")
    assert "ipv4IPIPTunnelAddr" not in n["spec"]["bgp"]


async def test_check_and_release_from_report_over_grpc(
    stub: pb_grpc.IPAMStub, datastore_client: DatastoreClient
) -> None:
    await datastore_client.create(ippool("p", "10.75.0.0/24"))
    used = await stub.AutoAssign(pb.AutoAssignRequest(num4=1, handle_id="net.used", node="n",
                                                      attributes={"node": "n"}))
    await stub.AutoAssign(pb.AutoAssignRequest(num4=2, handle_id="net.leak", node="n",
                                               attributes={"node": "n"}))
    ip = used.ipv4[0].split("/")[0]
    await datastore_client.create({
        "apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": "n-cni-used-eth0", "namespace": "default"},
        "spec": {"orchestrator": "cni", "workload": "used", "node": "n", "endpoint": "eth0",
                 "containerID": "used", "interfaceName": "caliused",
                 "ipNetworks": [f"{ip}/32"]}})
    resp = await stub.CheckIPAM(pb.CheckIPAMRequest())
    report = json.loads(resp.report_json)
    assert resp.problems == 2 and report["summary"]["allocatedNotInUse"] == 2
    info = await datastore_client.get("ClusterInformation", "default")
    assert report["clusterGUID"] == info["spec"]["clusterGUID"]
    rel = await stub.ReleaseFromReport(pb.ReleaseFromReportRequest(
        report_json=resp.report_json, force=True))
    assert len(rel.released) == 2
    assert (await stub.CheckIPAM(pb.CheckIPAMRequest())).problems == 0


async def test_pods_starting_together_on_a_node_share_block_writes(
    ipam: tuple[IPAMGraph, str], stub: pb_grpc.IPAMStub, datastore_client: DatastoreClient,
    etcd: EtcdServer,
) -> None:
    """Many one-address requests at once for two nodes, through the service on a real etcd:
    those queued behind a node's write in flight go out together (group commit), and every
    address is distinct, affine to its node and held by its own handle."""
    await datastore_client.create(ippool("p", "10.76.0.0/23"))
    for name in ("a", "b"):  # each node's first block, claimed one request at a time
        await stub.AutoAssign(pb.AutoAssignRequest(
            num4=1, handle_id=f"net.first-{name}", node=name, attributes={"node": name}))
    allocator = ipam[0].allocator
    txns = allocator.stats["txns"]

    async def pod(i: int) -> str:
        name = "ab"[i % 2]
        resp = await stub.AutoAssign(pb.AutoAssignRequest(
            num4=1, handle_id=f"net.pod{i}", node=name, attributes={"node": name}))
        (ip,) = resp.ipv4
        return ip.split("/")[0]

    ips = await asyncio.gather(*(pod(i) for i in range(60)))
    assert len(set(ips)) == 60
    assert allocator.stats["txns"] - txns < 60  # some requests shared a write
    blocks = {b.cidr: b for b in await all_blocks(etcd)}
    for i, ip in enumerate(ips):
        (block,) = [b for c, b in blocks.items() if ipaddress.ip_address(ip) in c]
        assert block.host == "ab"[i % 2]
        assert block.handle_of(block.ip_to_ordinal(ipaddress.ip_address(ip))) == f"net.pod{i}"
        assert await etcd_json(etcd, keys.handle_key(f"net.pod{i}")) == {
            "block": {str(block.cidr): 1}, "deleted": False}
    # ipam check agrees: 62 allocations, each with its handle; with no WEPs behind them, all
    # 62 are reported as allocated-not-in-use and nothing else is wrong.
    report = json.loads((await stub.CheckIPAM(pb.CheckIPAMRequest())).report_json)
    assert report["summary"]["allocations"] == report["summary"]["handles"] == 62
    assert report["summary"]["allocatedNotInUse"] == 62


# -- calicoctl ipam, as a user runs it --------------------------------------------------------


def calicoctl(target: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """The ``calicoctl`` binary with ``CALICO_IPAM`` pointing at the service under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALICO_", "OTEL_"))}
    env["CALICO_IPAM"] = target
    return subprocess.run(
        [str(Path(sys.executable).with_name("calicoctl")), *argv],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )


async def run_calicoctl(target: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(calicoctl, target, *argv)


async def test_calicoctl_ipam_through_the_service(
    ipam: tuple[IPAMGraph, str], stub: pb_grpc.IPAMStub, datastore_client: DatastoreClient,
    tmp_path: Path,
) -> None:
    target = ipam[1]
    await datastore_client.create(ippool("p", "10.78.0.0/24"))
    await stub.AssignIP(pb.AssignIPRequest(ip="10.78.0.1", handle_id="net.a", node="n1",
                                           attributes={"node": "n1", "pod": "web",
                                                       "namespace": "prod"}))
    await stub.AutoAssign(pb.AutoAssignRequest(num4=2, handle_id="net.leak", node="n1",
                                               attributes={"node": "n1"}))
    await stub.AssignIP(pb.AssignIPRequest(ip="10.78.0.9", handle_id="net.b", node="n2",
                                           attributes={"node": "n2"}))
    await datastore_client.create({
        "apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": "n1-k8s-web-eth0", "namespace": "prod"},
        "spec": {"orchestrator": "k8s", "pod": "web", "node": "n1",
                 "endpoint": "eth0", "interfaceName": "caliweb",
                 "ipNetworks": ["10.78.0.1/32", "10.78.0.9/32"]}})

    r = await run_calicoctl(target, "ipam", "show", "--show-blocks")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == """\
+----------+--------------+-----------+------------+--------------+-----------+
| GROUPING |     CIDR     | IPS TOTAL | IPS IN USE | IPS RESERVED | IPS FREE  |
+----------+--------------+-----------+------------+--------------+-----------+
| IP Pool  | 10.78.0.0/24 |       256 |     4 (2%) |       0 (0%) | 252 (98%) |
| Block    | 10.78.0.0/26 |        64 |     4 (6%) |       0 (0%) |  60 (94%) |
+----------+--------------+-----------+------------+--------------+-----------+
"""
    r = await run_calicoctl(target, "ipam", "show", "--ip", "10.78.0.1")
    assert r.stdout.splitlines()[:2] == ["IP 10.78.0.1 is in use", "Handle ID: net.a"]
    r = await run_calicoctl(target, "ipam", "show", "--show-borrowed")
    assert "| 10.78.0.9 | n2             | 10.78.0.0/26 | n1          |" in r.stdout

    r = await run_calicoctl(target, "ipam", "configure", "--strictaffinity=true")
    assert (r.returncode, r.stdout) == (0, "Successfully set StrictAffinity to: true\n")
    r = await run_calicoctl(target, "ipam", "show", "--show-configuration")
    assert "| StrictAffinity     | true  |" in r.stdout
    r = await run_calicoctl(target, "ipam", "configure", "--strictaffinity=false",
                            "--max-blocks-per-host=3")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "requires StrictAffinity" in r.stderr

    report = tmp_path / "report.json"
    r = await run_calicoctl(target, "ipam", "check", "-o", str(report))
    assert r.returncode == 0, r.stderr
    assert "Found 2 IPs that are allocated in IPAM but not actually in use." in r.stdout
    assert r.stdout.endswith("Check complete; found 2 problems.\n")
    r = await run_calicoctl(target, "ipam", "release", "--from-report", str(report))
    assert r.returncode == 1 and "not locked" in r.stderr and r.stdout == ""
    r = await run_calicoctl(target, "ipam", "release", "--from-report", str(report), "--force")
    assert r.returncode == 0, r.stderr
    assert "Released 2 IPs successfully" in r.stdout
    r = await run_calicoctl(target, "ipam", "check")
    assert r.stdout.endswith("Check complete; found 0 problems.\n")
    r = await run_calicoctl(target, "ipam", "release", "--ip", "10.78.0.9")
    assert (r.returncode, r.stdout) == (0, "Successfully released IP address 10.78.0.9\n")
    r = await run_calicoctl(target, "ipam", "release", "--ip", "10.78.0.9")
    assert (r.returncode, r.stderr) == (1, "IP address 10.78.0.9 is not assigned\n")


# -- the calico-ipam CNI plugin, as a runtime runs it ---------------------------------------


def cni(
    command: str, conf: dict[str, Any], endpoint: str, container: str = "c1", **env: str
) -> tuple[int, Any, str]:
    full_env = {
        **os.environ,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": f"/var/run/netns/{container}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        "CALICO_IPAM_ENDPOINT": endpoint,
        **env,
    }
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("calico-ipam"))],
        input=json.dumps(conf).encode(),
        env=full_env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout.decode()
    return proc.returncode, json.loads(out) if out.strip() else None, proc.stderr.decode()


async def run_cni(
    command: str, conf: dict[str, Any], endpoint: str, container: str = "c1"
) -> tuple[int, Any, str]:
    return await asyncio.to_thread(cni, command, conf, endpoint, container)


async def test_calico_ipam_with_the_users_example_config(
    ipam: tuple[IPAMGraph, str], datastore_client: DatastoreClient
) -> None:
    conf = json.loads(EXAMPLE_CONF.read_text())
    conf["nodename"] = "node-1"
    target = ipam[1]
    rc, out, _ = await run_cni("ADD", conf, target)
    assert rc == 1 and out["code"] == 7 and "does not exist, or is not enabled" in out["msg"]
    for name, cidr in (("p10", "10.0.0.0/24"), ("p20", "20.0.0.0/16"),
                       ("p6", "2001:db8::/120")):
        await datastore_client.create(ippool(name, cidr))
    rc, out, err = await run_cni("ADD", conf, target)
    assert rc == 0, err
    assert out["cniVersion"] == "0.1.0"  # the old result shape: ip4 / ip6
    v4 = ipaddress.ip_interface(out["ip4"]["ip"])
    v6 = ipaddress.ip_interface(out["ip6"]["ip"])
    assert v4.ip in ipaddress.ip_network("10.0.0.0/24") and v4.network.prefixlen == 26
    assert v6.ip in ipaddress.ip_network("2001:db8::/120")
    a = await ipam[0].allocator.get_assignment(str(v4.ip))
    assert a.handle == "any_name.c1" and a.attrs["node"] == "node-1"
    assert a.attrs["timestamp"].endswith("+0000 UTC")

    check_conf = dict(conf, cniVersion="1.0.0",
                      prevResult={"cniVersion": "1.0.0", "ips": [{"address": str(v4)},
                                                                 {"address": str(v6)}]})
    rc, out, _ = await run_cni("CHECK", check_conf, target)
    assert (rc, out) == (0, None)
    for _ in range(2):  # DEL is idempotent
        rc, out, _ = await run_cni("DEL", conf, target)
        assert (rc, out) == (0, None)
    assert not (await ipam[0].allocator.get_assignment(str(v4.ip))).allocated
    rc, out, _ = await run_cni("CHECK", check_conf, target)
    assert rc == 1 and "not allocated" in out["msg"]
    rc, out, _ = await run_cni("VERSION", {}, target)
    assert rc == 0 and "1.0.0" in out["supportedVersions"]


async def test_calico_ipam_errors_are_cni_json(
    ipam: tuple[IPAMGraph, str], datastore_client: DatastoreClient
) -> None:
    await datastore_client.create(ippool("tiny", "10.76.0.0/31", blockSize=31))
    conf = {"cniVersion": "0.3.1", "name": "net", "nodename": "n",
            "ipam": {"type": "calico-ipam", "ipv4_pools": ["tiny"]}}
    for c in ("a", "b"):
        rc, out, err = await run_cni("ADD", conf, ipam[1], container=c)
        assert rc == 0, err
        assert out["ips"][0]["version"] == "4"
    rc, out, _ = await run_cni("ADD", conf, ipam[1], container="c")
    assert rc == 1
    assert out["code"] == 100 and out["cniVersion"] == "0.3.1"
    assert "tiny (10.76.0.0/31)" in out["msg"] and "calicoctl" in out["details"]
    rc, out, _ = await run_cni("ADD", conf, "unix:///nonexistent/ipam.sock", container="d")
    assert rc == 1 and out["code"] == 11 and "calico-ipam-service" in out["details"]
    rc, out, _ = await run_cni("ADD", dict(conf, ipam={"assign_ipv4": "false"}), ipam[1])
    assert rc == 1 and out["code"] == 7


async def test_concurrent_plugin_processes_on_four_nodes(
    ipam: tuple[IPAMGraph, str], datastore_client: DatastoreClient, etcd: EtcdServer
) -> None:
    await datastore_client.create(ippool("p", "10.77.0.0/22"))
    conf = {"cniVersion": "1.0.0", "name": "net", "ipam": {"type": "calico-ipam"}}

    async def add(i: int) -> str:
        rc, out, err = await run_cni("ADD", dict(conf, nodename=f"node-{i % 4}"), ipam[1],
                                     container=f"c{i}")
        assert rc == 0, err
        return str(out["ips"][0]["address"])

    ips = await asyncio.gather(*(add(i) for i in range(24)))
    assert len(set(ips)) == 24
    blocks = await all_blocks(etcd)
    for b in blocks:
        for o in b.allocated_ordinals():
            assert (b.attribute_of(o) or {})["secondary"]["node"] == b.host
    dels = await asyncio.gather(*(run_cni("DEL", dict(conf, nodename="x"), ipam[1],
                                          container=f"c{i}") for i in range(24)))
    assert all(rc == 0 for rc, _, _ in dels)
    assert sum(b.in_use() for b in await all_blocks(etcd)) == 0


# -- independent allocator processes on one etcd --------------------------------------------


async def all_blocks(etcd: EtcdServer) -> list[Block]:
    kv = EtcdKVStore.from_endpoint(etcd.endpoint)
    try:
        kvs, _ = await kv.list(keys.BLOCK_PREFIX)
        return [Block.from_json(x.value) for x in kvs]
    finally:
        await kv.close()


def start_worker(
    etcd: EtcdServer, node_name: str, count: int, prefix: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.ipam.testing", "worker", "--etcd", etcd.endpoint,
         "--node", node_name, "--count", str(count), "--prefix", prefix, "--weps"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


async def check_etcd(etcd: EtcdServer) -> check.Report:
    kv = EtcdKVStore.from_endpoint(etcd.endpoint)
    try:
        rs = KVResourceStore(kv)
        return await check.check(Allocator(kv, ResourceCache(rs, max_age=0)), rs)
    finally:
        await kv.close()


@pytest.fixture
async def clean_etcd(datastore: Any, datastore_client: DatastoreClient) -> DatastoreClient:
    """A wiped etcd (the datastore fixture wipes it) with the pool the workers use."""
    await datastore_client.create(ippool("workers", "10.80.0.0/16"))
    return datastore_client


@pytest.mark.slow
async def test_eight_allocator_processes_on_four_nodes(
    clean_etcd: DatastoreClient, etcd: EtcdServer, ipam: tuple[IPAMGraph, str], tmp_path: Path
) -> None:
    per_worker = FULL_SIZE // 8
    started = time.monotonic()
    procs = [start_worker(etcd, f"node-{i % 4}", per_worker, f"w{i}") for i in range(8)]
    outs = await asyncio.gather(*(asyncio.to_thread(p.communicate, timeout=600) for p in procs))
    elapsed = time.monotonic() - started
    assert [p.returncode for p in procs] == [0] * 8, [e for _, e in outs]
    lines = [line.split() for out, _ in outs for line in out.splitlines()]
    ips = [ip for ip, _ in lines]
    assert len(ips) == per_worker * 8 and len(set(ips)) == len(ips)  # nothing handed out twice
    stats = [json.loads(e.strip().splitlines()[-1]) for _, e in outs]
    assert sum(s["conflicts"] for s in stats) > 0  # the two workers per node did race

    blocks = await all_blocks(etcd)
    allocated = {str(b.ordinal_to_ip(o)): b for b in blocks for o in b.allocated_ordinals()}
    assert set(allocated) == set(ips)
    for b in blocks:
        for o in b.allocated_ordinals():
            # Each from a block affine to its node: 1,000 per node fit in 16 blocks, no borrowing.
            assert (b.attribute_of(o) or {})["secondary"]["node"] == b.host
    # `calicoctl ipam check`, through the IPAM service, finds nothing wrong.
    r = await run_calicoctl(ipam[1], "ipam", "check", "-o", str(tmp_path / "report.json"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("Check complete; found 0 problems.\n"), r.stdout
    summary = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert summary["allocations"] == len(ips) == summary["workloadIPs"]
    assert summary["handles"] == len(ips) and summary["inUseIPs"] == len(ips)
    print(f"\n{len(ips)} addresses by 8 processes on 4 nodes in {elapsed:.1f}s "
          f"({len(ips) / elapsed:.0f}/s with a WEP write each); conflicts "
          f"{sum(s['conflicts'] for s in stats)}")


@pytest.mark.slow
async def test_sigkilled_allocator_leaves_only_what_check_finds_and_release_reclaims(
    clean_etcd: DatastoreClient, etcd: EtcdServer, ipam: tuple[IPAMGraph, str], tmp_path: Path
) -> None:
    victim = start_worker(etcd, "node-0", 100_000, "victim")
    rival = start_worker(etcd, "node-0", 200, "rival")
    assert victim.stdout is not None
    seen: list[str] = []
    while len(seen) < 150:  # let it get well into its run, racing the rival
        line = await asyncio.to_thread(victim.stdout.readline)
        assert line, victim.stderr.read() if victim.stderr else ""
        seen.append(line.split()[0])
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    out, err = await asyncio.to_thread(rival.communicate, timeout=120)
    assert rival.returncode == 0, err

    # What `calicoctl ipam check` finds, through the IPAM service.
    report_path = tmp_path / "report.json"
    r = await run_calicoctl(ipam[1], "ipam", "check", "-o", str(report_path))
    assert r.returncode == 0, r.stderr
    report = json.loads(report_path.read_text())
    s = report["summary"]
    # The victim died between an allocation and its WEP write at most once; nothing else is
    # inconsistent: no unallocated in-use address, no handle without addresses or vice versa.
    assert s["allocatedNotInUse"] <= 1 and s["inUseNotAllocated"] == 0
    assert s["handlesWithoutIPs"] == 0 and s["missingHandles"] == 0
    leaked = [ip for ip, allocs in report["allocations"].items()
              if not any(a["inUse"] for a in allocs)]
    assert all(report["allocations"][ip][0]["handle"].startswith("victim.") for ip in leaked)
    assert s["problems"] == len(leaked)

    # `calicoctl ipam release --from-report` reclaims it (the datastore is not locked here).
    r = await run_calicoctl(ipam[1], "ipam", "release", "--from-report", str(report_path),
                            "--force")
    assert r.returncode == 0, r.stderr
    if leaked:
        assert f"Released {len(leaked)} IPs successfully" in r.stdout
    else:
        assert "Report didn't contain any leaked IPs to clean up." in r.stdout
    r = await run_calicoctl(ipam[1], "ipam", "check")
    assert r.stdout.endswith("Check complete; found 0 problems.\n"), r.stdout
    after = await check_etcd(etcd)
    assert after.problems == 0
    live = set(report["allocations"]) - set(leaked)
    assert set(seen) <= live | set(leaked)  # everything it reported was really allocated
    assert len({ln.split()[0] for ln in out.splitlines()} & set(seen)) == 0
