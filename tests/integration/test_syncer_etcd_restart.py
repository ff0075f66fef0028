"""A watch survives etcd being killed and restarted.

etcd is SIGKILLed under a running datastore service and a syncing client. The Syncer must
report WAIT_FOR_DATASTORE, reconnect when etcd is back, re-list (RESYNC_IN_PROGRESS) and reach
IN_SYNC with a view equal to etcd's content — including writes made straight into etcd with
aetcd *while the syncer is in the middle of re-listing*: the recorder holds the syncer at its
RESYNC_IN_PROGRESS report (after its first list answered, before the others) until those
writes are done, so the test does not depend on timing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aetcd
import pytest

from libcalico.client import DatastoreClient, KVOp, Syncer, SyncStatus
from libcalico.etcd_server import EtcdServer
from libcalico.testing.syncer import SyncRecorder
from tests.integration.test_syncer import IPAM, RES, etcd_view, ippool, until_equal


@pytest.fixture
def etcd(etcd_per_test: EtcdServer) -> EtcdServer:
    """This module kills etcd: each test gets its own."""
    return etcd_per_test


def tier(name: str, order: float) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Tier",
        "metadata": {"name": name},
        "spec": {"order": order},
    }


async def test_syncer_survives_etcd_kill_and_restart(
    etcd: EtcdServer, datastore_client: DatastoreClient
) -> None:
    c = datastore_client
    for i in range(3):
        await c.create(ippool(f"pool-{i}", f"10.{70 + i}.0.0/16"))
    await c.create(tier("security", 100))
    await c.kv_txn([], [KVOp.put(IPAM + "handle/h1", {"block": {}})])

    # Every kind, plus the IPAM prefix; IPPool is listed before Tier, the KV prefix last.
    prefixes = [RES, IPAM]
    recorder = SyncRecorder()
    syncer = Syncer(c, recorder, kv_prefixes=[IPAM], backoff_max=0.5)
    task = asyncio.get_running_loop().create_task(syncer.run())
    raw = aetcd.Client(etcd.host, etcd.port)
    try:
        await until_equal(recorder, lambda: etcd_view(raw, prefixes))
        statuses_before = len(recorder.statuses)

        # Hold the syncer at its next RESYNC_IN_PROGRESS report.
        release = asyncio.Event()
        recorder.gate[SyncStatus.RESYNC_IN_PROGRESS] = release
        etcd.kill()
        await recorder.wait_for(lambda: recorder.status is SyncStatus.WAIT_FOR_DATASTORE)
        await etcd.start_async()
        await recorder.wait_for(lambda: recorder.status is SyncStatus.RESYNC_IN_PROGRESS, 20)

        # The syncer has listed its first kind and waits in the callback: write behind its
        # back, to kinds it has listed, kinds it has not, and the raw prefix.
        await raw.delete((RES + "ippools/pool-0").encode())
        changed = ippool("pool-1", "10.71.0.0/16", natOutgoing=True)
        await raw.put((RES + "ippools/pool-1").encode(), json.dumps(changed).encode())
        await raw.put((RES + "ippools/pool-9").encode(),
                      json.dumps(ippool("pool-9", "10.79.0.0/16")).encode())
        await raw.put((RES + "tiers/security").encode(), json.dumps(tier("security", 50)).encode())
        await raw.delete((IPAM + "handle/h1").encode())
        await raw.put((IPAM + "handle/h2").encode(), b'{"block":{}}')
        release.set()
        del recorder.gate[SyncStatus.RESYNC_IN_PROGRESS]

        await until_equal(recorder, lambda: etcd_view(raw, prefixes), timeout=20)
        after = recorder.statuses[statuses_before:]
        assert after[0] is SyncStatus.WAIT_FOR_DATASTORE
        assert after[-2:] == [SyncStatus.RESYNC_IN_PROGRESS, SyncStatus.IN_SYNC]
        assert recorder.view[RES + "ippools/pool-1"]["spec"]["natOutgoing"] is True
        assert RES + "ippools/pool-0" not in recorder.view
        assert recorder.view[RES + "tiers/security"]["spec"]["order"] == 50

        # And the watch that follows is live again.
        await c.create(ippool("pool-5", "10.75.0.0/16"))
        await until_equal(recorder, lambda: etcd_view(raw, prefixes))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await raw.close()
