"""The Syncer against the real service and etcd: snapshot, deltas, and a service restart.

"The caller's view equals etcd" is checked against etcd itself, read with aetcd: every key
under the synced prefixes, resources with their mod revision as resourceVersion.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import aetcd

from libcalico.client import DatastoreClient, KVOp, Syncer, SyncStatus
from libcalico.etcd_server import EtcdServer
from libcalico.testing.datastore import running_datastore, short_socket_dir
from libcalico.testing.syncer import SyncRecorder

RES = "/calico/resources/v3/projectcalico.org/"
IPAM = "/calico/ipam/v2/"


def ippool(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }


async def etcd_view(client: aetcd.Client, prefixes: list[str]) -> dict[str, Any]:
    """What a synced caller should hold: decoded values, resources with resourceVersion."""
    view: dict[str, Any] = {}
    for prefix in prefixes:
        for kv in await client.get_prefix(prefix.encode()):
            value = json.loads(kv.value)
            if prefix.startswith(RES):
                value["metadata"]["resourceVersion"] = str(kv.mod_revision)
            view[kv.key.decode()] = value
    return view


async def until_equal(
    recorder: SyncRecorder, expected: Callable[[], Awaitable[dict[str, Any]]], timeout: float = 15
) -> None:
    """Poll (bounded) until the recorder is in sync and its view equals ``expected()``."""
    async with asyncio.timeout(timeout):
        while True:
            if recorder.in_sync and recorder.view == await expected():
                return
            await asyncio.sleep(0.02)


async def test_snapshot_then_deltas(
    datastore_client: DatastoreClient, etcd_client: aetcd.Client
) -> None:
    c = datastore_client
    await c.create(ippool("a", "10.65.0.0/16"))
    await c.kv_txn([], [KVOp.put(IPAM + "handle/h1", {"block": {}})])
    recorder = SyncRecorder()
    syncer = Syncer(c, recorder, kinds=["IPPool", "Tier"], kv_prefixes=[IPAM])
    task = asyncio.get_running_loop().create_task(syncer.run())
    prefixes = [RES + "ippools/", RES + "tiers/", IPAM]
    try:
        await until_equal(recorder, lambda: etcd_view(etcd_client, prefixes))
        assert recorder.statuses == [
            SyncStatus.WAIT_FOR_DATASTORE, SyncStatus.RESYNC_IN_PROGRESS, SyncStatus.IN_SYNC
        ]
        assert RES + "tiers/default" in recorder.view
        b = await c.create(ippool("b", "10.66.0.0/16"))
        await c.delete("IPPool", "a")
        await c.kv_txn([], [KVOp.put(IPAM + "handle/h2", {"block": {}})])
        await etcd_client.put(b"/calico/felix/v2/no-region/host/n1/status", b"{}")  # not synced
        await until_equal(recorder, lambda: etcd_view(etcd_client, prefixes))
        last = recorder.updates[-1]
        assert last.key == IPAM + "handle/h2" and last.revision > int(
            b["metadata"]["resourceVersion"]
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_service_restart_resyncs_the_difference(
    etcd: EtcdServer, etcd_client: aetcd.Client
) -> None:
    """The datastore service goes away and comes back on the same socket; the syncer
    re-lists and delivers only what changed while it was gone."""
    await etcd_client.delete_prefix(b"/calico/")
    sock_dir = short_socket_dir()
    sock = sock_dir / "datastore.sock"
    prefixes = [RES + "ippools/"]
    recorder = SyncRecorder()
    try:
        async with DatastoreClient(f"unix://{sock}") as client:
            syncer = Syncer(client, recorder, kinds=["IPPool"], backoff_max=0.2)
            async with running_datastore([etcd.endpoint], sock):
                await client.create(ippool("a", "10.65.0.0/16"))
                await client.create(ippool("b", "10.66.0.0/16"))
                task = asyncio.get_running_loop().create_task(syncer.run())
                await until_equal(recorder, lambda: etcd_view(etcd_client, prefixes))
            await recorder.wait_for(lambda: recorder.status is SyncStatus.WAIT_FOR_DATASTORE)
            # While the service is down: b is deleted and c created, straight in etcd.
            await etcd_client.delete((RES + "ippools/b").encode())
            await etcd_client.put(
                (RES + "ippools/c").encode(), json.dumps(ippool("c", "10.67.0.0/16")).encode()
            )
            seen = len(recorder.updates)
            async with running_datastore([etcd.endpoint], sock):
                await until_equal(recorder, lambda: etcd_view(etcd_client, prefixes))
            resent = sorted(
                (u.key.rsplit("/", 1)[1], u.value is None) for u in recorder.updates[seen:]
            )
            assert resent == [("b", True), ("c", False)]  # a was unchanged: not re-sent
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
