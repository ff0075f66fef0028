"""The datastore service's client and the list+watch syncer built on it.

- ``DatastoreClient(target)``: async create/update/apply/delete/get/list/watch of Calico
  resources (dicts of Calico's v3 JSON) and kv_get/kv_list/kv_txn of raw keys.
- ``Syncer(client, callbacks, kinds, kv_prefixes)``: WAIT_FOR_DATASTORE → RESYNC_IN_PROGRESS →
  IN_SYNC, then deltas; re-lists and delivers the difference after any failure.
"""

from libcalico.client.datastore import (
    KV,
    DatastoreClient,
    EventType,
    KVOp,
    Resource,
    TxnResult,
    WatchEvent,
)
from libcalico.client.syncer import Syncer, SyncerCallbacks, SyncStatus, Update

__all__ = [
    "KV",
    "DatastoreClient",
    "EventType",
    "KVOp",
    "Resource",
    "SyncStatus",
    "Syncer",
    "SyncerCallbacks",
    "TxnResult",
    "Update",
    "WatchEvent",
]
