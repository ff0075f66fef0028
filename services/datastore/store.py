"""The datastore's domain logic: Calico resources and raw keys over etcd. No gRPC here.

What etcd holds is what a Calico cluster in etcd mode holds: each resource is Calico's v3 JSON
(``apiVersion``, ``kind``, ``metadata``, ``spec``) at the key ``libcalico.keys.resource_key``
gives, so ``etcdctl get --prefix /calico`` reads like a Calico cluster.

Rules this module keeps:

- **Validate before any write.** Every create/update/apply goes through
  ``libcalico.model.validate`` (defaults applied) before etcd is touched; an invalid resource
  raises ``ValidationError`` and nothing is written.
- **resourceVersion is the etcd mod revision** and is *not* stored in the value (Calico strips
  it too): the revision is the source of truth, and a value copied back into etcd by hand can
  never carry a stale version. Reads fill ``metadata.resourceVersion`` from the mod revision.
- **uid and creationTimestamp are the server's**, as in libcalico-go: set on create
  (a UUID4 and the UTC time to the second), carried over from the stored value on update and
  apply, whatever the request says.
- **Compare-and-swap on revisions.** Create is create-if-absent. Update/apply/delete with a
  resourceVersion compare it with the key's mod revision in the same transaction; without one,
  update/apply read the current value and compare against *its* revision, retrying a bounded
  number of times when another writer slips in between. A stale version is a
  ``ConflictError`` naming the resource, the version sent and the current one.
- **Keys only through ``libcalico.keys``.**
- **Raw keys (the KV API) are outside** ``/calico/resources/``: IPAM blocks, affinities,
  handles, Felix status. Resources are only written validated, through the typed API.

Trace context per revision: each write remembers the caller's W3C ``traceparent`` against the
etcd revision (and key) the write produced, in a bounded in-memory map (``RevisionTraces``).
The watch attaches it to the event of that revision, so the calc graph continues the trace of the
``calicoctl apply`` that caused it. The map is per process and lossy by design: writes made by
another datastore replica or straight into etcd, or older than the map's capacity, have no
traceparent (an empty string). Storing the trace in etcd instead would put non-Calico data
into Calico's values or double the writes, for telemetry only.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from libcalico import keys, model
from libcalico.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    RetriesExhaustedError,
    ValidationError,
)
from libcalico.runtime.log import get_logger
from libcalico.runtime.telemetry import inject_traceparent
from services.datastore.etcd import KV, Compare, Delete, Etcd, Get, Op, Put, TxnResult
from services.datastore.metrics import counted_write

log = get_logger(__name__)

API_VERSION = "projectcalico.org/v3"
#: Bounded retries of read-compare-write when another writer wins between the read and the write.
MAX_CAS_RETRIES = 20
#: The raw-key API may not reach into this subtree (every API version of Calico's resources).
RESOURCES_ROOT = "/calico/resources/"
assert keys.RESOURCES_PREFIX.startswith(RESOURCES_ROOT)


# One encoder for every write: json.dumps with non-default options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(resource: Mapping[str, Any]) -> bytes:
    """Calico's JSON for a resource: compact, keys in the order the dict holds them."""
    return _ENCODER.encode(resource).encode()


def describe(kind: str, name: str, namespace: str = "") -> str:
    """How messages name a resource: ``IPPool(pool-a)``, ``NetworkPolicy(ns1/allow-dns)``."""
    return f"{kind}({namespace}/{name})" if namespace else f"{kind}({name})"


def now_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True, slots=True)
class StoredResource:
    """A resource as read from etcd: its identity, the etcd mod revision and the stored bytes.

    ``raw`` is exactly what etcd holds (no resourceVersion); ``to_dict()`` decodes it and fills
    ``metadata.resourceVersion``. Lists and watches pass ``raw`` through without decoding.
    """

    kind: str
    namespace: str
    name: str
    revision: int
    raw: bytes

    @property
    def resource_version(self) -> str:
        return str(self.revision) if self.revision else ""

    def to_dict(self) -> dict[str, Any]:
        return with_resource_version(self.raw, self.revision)


def with_resource_version(raw: bytes, revision: int) -> dict[str, Any]:
    """Decode stored JSON and set ``metadata.resourceVersion`` to ``revision``."""
    data: dict[str, Any] = json.loads(raw) if raw else {}
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        meta = data["metadata"] = {}
    if revision:
        meta["resourceVersion"] = str(revision)
    return data


@dataclass(frozen=True, slots=True)
class KVWrite:
    """A put (``delete=False``) or delete of a raw key in ``Store.kv_txn``."""

    key: str
    value: bytes = b""
    delete: bool = False


@dataclass(frozen=True, slots=True)
class KVTxnOutcome:
    succeeded: bool
    revision: int
    #: On failure, the current value of each compared key that exists.
    current: list[KV]


class RevisionTraces:
    """W3C traceparent per written (etcd revision, key), for the last ``capacity`` writes.

    Keyed by revision *and* key because concurrent writes are committed together and share
    one revision (see ``etcd._Batcher``).

    The watch can see a write's event before the writer has its transaction's response (and
    so its revision). Writers therefore check in (``begin``) before the transaction and out
    (``end``) after it; ``settle(revision, key)`` waits — only when a write of this process is
    in flight, and at most ``settle_timeout`` — until every write in flight at that moment has
    checked out, so the traceparent of a revision this process wrote is never missed.
    """

    def __init__(self, capacity: int = 10_000, *, settle_timeout: float = 0.5) -> None:
        self.capacity = capacity
        self.settle_timeout = settle_timeout
        self._traces: OrderedDict[tuple[int, str], str] = OrderedDict()
        self._active: set[int] = set()
        self._tickets = 0
        self._changed: asyncio.Event | None = None

    def record(self, revision: int, key: str, traceparent: str) -> None:
        if not traceparent or revision <= 0:
            return
        self._traces[(revision, key)] = traceparent
        while len(self._traces) > self.capacity:
            self._traces.popitem(last=False)

    def get(self, revision: int, key: str) -> str:
        return self._traces.get((revision, key), "")

    def begin(self) -> int:
        """A write is about to be sent; returns its ticket for ``end``."""
        self._tickets += 1
        self._active.add(self._tickets)
        return self._tickets

    def end(self, ticket: int, revision: int, keys: Sequence[str], traceparent: str) -> None:
        """The write with ``ticket`` finished at ``revision`` (0 if it wrote nothing)."""
        for key in keys:
            self.record(revision, key, traceparent)
        self._active.discard(ticket)
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def settle(self, revision: int, key: str) -> str:
        """The traceparent of ``key`` at ``revision``, waiting for this process's writes in
        flight."""
        found = self._traces.get((revision, key))
        if found is not None or not self._active:
            return found or ""
        waiting = set(self._active)
        deadline = time.monotonic() + self.settle_timeout
        while not waiting.isdisjoint(self._active) and (revision, key) not in self._traces:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break
        return self._traces.get((revision, key), "")

    def __len__(self) -> int:
        return len(self._traces)


@dataclass(frozen=True, slots=True)
class _Ident:
    kind: str
    namespace: str
    name: str
    key: str

    @property
    def label(self) -> str:
        return describe(self.kind, self.name, self.namespace)


class Store:
    """Typed resources and raw keys over one etcd. See the module docstring for the rules."""

    def __init__(
        self,
        etcd: Etcd,
        *,
        traces: RevisionTraces | None = None,
        traceparent: Callable[[], str] = inject_traceparent,
        max_retries: int = MAX_CAS_RETRIES,
    ) -> None:
        self.etcd = etcd
        self.traces = traces if traces is not None else RevisionTraces()
        self._traceparent = traceparent
        self.max_retries = max_retries

    # -- identities ----------------------------------------------------------------------------

    @staticmethod
    def kind_info(kind: str) -> Any:
        """The model's registry entry for ``kind`` (aliases and plurals accepted)."""
        return model.lookup_kind(kind)

    def _ident(self, kind: str, name: str, namespace: str | None) -> _Ident:
        info = self.kind_info(kind)
        canonical: str = info.kind
        ns = namespace or ""
        if not name:
            raise ValidationError("a name is required", resource=canonical, field="metadata.name")
        if info.namespaced and not ns:
            raise ValidationError(
                "a namespace is required for a namespaced kind",
                resource=describe(canonical, name),
                field="metadata.namespace",
            )
        if not info.namespaced:
            ns = ""
        key = keys.resource_key(canonical, name, ns or None)
        return _Ident(canonical, ns, name, key)

    def _validated(self, resource: Mapping[str, Any]) -> tuple[dict[str, Any], _Ident]:
        if not isinstance(resource, Mapping):
            raise ValidationError("a resource must be a JSON object")
        validated: dict[str, Any] = dict(model.validate(resource))
        meta: dict[str, Any] = validated.get("metadata") or {}
        ident = self._ident(
            str(validated.get("kind", "")), str(meta.get("name", "")), meta.get("namespace")
        )
        validated["kind"] = ident.kind
        validated.setdefault("apiVersion", API_VERSION)
        return validated, ident

    @staticmethod
    def _parse_version(value: Any, ident: _Ident) -> int | None:
        if value in (None, "", 0):
            return None
        try:
            rev = int(value)
        except (TypeError, ValueError):
            rev = -1
        if rev <= 0:
            raise ValidationError(
                f"{value!r} is not a resource version (an etcd revision)",
                resource=ident.label,
                field="metadata.resourceVersion",
            )
        return rev

    def _conflict(self, ident: _Ident, sent: int, current: KV | None) -> ConflictError:
        now = f"current version is {current.mod_revision}" if current else "it no longer exists"
        reason = f"version {sent} is stale; {now}"
        return ConflictError(
            f"{ident.label} metadata.resourceVersion: {reason}",
            resource=ident.label,
            field="metadata.resourceVersion",
            reason=reason,
        )

    @staticmethod
    def _stored_value(
        validated: Mapping[str, Any], *, uid: str, created: str
    ) -> dict[str, Any]:
        """The value written to etcd: server fields set, resourceVersion dropped."""
        out = dict(validated)
        meta = {k: v for k, v in (validated.get("metadata") or {}).items()
                if k != "resourceVersion"}
        meta["uid"] = uid
        meta["creationTimestamp"] = created
        out["metadata"] = meta
        return out

    @staticmethod
    def _server_fields(stored: KV) -> tuple[str, str]:
        try:
            meta = json.loads(stored.value).get("metadata") or {}
        except (ValueError, AttributeError):
            meta = {}
        return str(meta.get("uid") or uuid.uuid4()), str(
            meta.get("creationTimestamp") or now_timestamp()
        )

    async def _write(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """One writing transaction, its revision remembered with the caller's traceparent."""
        traceparent = self._traceparent()
        ticket = self.traces.begin()
        revision = 0
        written = [op.key for op in success if isinstance(op, Put | Delete)]
        try:
            result = await self.etcd.txn(compares, success, failure)
            if result.succeeded:
                revision = result.revision
            return result
        finally:
            self.traces.end(ticket, revision, written, traceparent)

    @staticmethod
    def _written(ident: _Ident, revision: int, raw: bytes) -> StoredResource:
        return StoredResource(ident.kind, ident.namespace, ident.name, revision, raw)

    def _metric_kind(self, resource: Any) -> str:
        try:
            return str(self.kind_info(str(resource.get("kind", ""))).kind)
        except Exception:
            return "invalid"

    # -- resources: writes ---------------------------------------------------------------------

    async def create(self, resource: Mapping[str, Any], *, dry_run: bool = False) -> StoredResource:
        """Create ``resource``; ``AlreadyExistsError`` if its key exists."""
        with counted_write(self._metric_kind(resource), "create"):
            validated, ident = self._validated(resource)
            rv = (validated.get("metadata") or {}).get("resourceVersion")
            if rv not in (None, ""):
                raise ValidationError(
                    "must not be set when creating a resource",
                    resource=ident.label,
                    field="metadata.resourceVersion",
                )
            value = encode(
                self._stored_value(validated, uid=str(uuid.uuid4()), created=now_timestamp())
            )
            if dry_run:
                return StoredResource(ident.kind, ident.namespace, ident.name, 0, value)
            result = await self._write(
                [Compare(ident.key, "create", "==", 0)], [Put(ident.key, value)]
            )
            if not result.succeeded:
                raise AlreadyExistsError(
                    f"{ident.label} already exists", resource=ident.label, reason="already exists"
                )
            return self._written(ident, result.revision, value)

    async def update(self, resource: Mapping[str, Any], *, dry_run: bool = False) -> StoredResource:
        """Replace an existing resource; CAS on resourceVersion when given, else on what it read."""
        with counted_write(self._metric_kind(resource), "update"):
            validated, ident = self._validated(resource)
            sent = self._parse_version((validated.get("metadata") or {}).get("resourceVersion"),
                                       ident)
            return await self._replace(validated, ident, sent, create=False, dry_run=dry_run)

    async def apply(self, resource: Mapping[str, Any], *, dry_run: bool = False) -> StoredResource:
        """Create or replace; a given resourceVersion is still compared."""
        with counted_write(self._metric_kind(resource), "apply"):
            validated, ident = self._validated(resource)
            sent = self._parse_version((validated.get("metadata") or {}).get("resourceVersion"),
                                       ident)
            return await self._replace(validated, ident, sent, create=True, dry_run=dry_run)

    async def _replace(
        self,
        validated: dict[str, Any],
        ident: _Ident,
        sent: int | None,
        *,
        create: bool,
        dry_run: bool,
    ) -> StoredResource:
        for _ in range(self.max_retries):
            current, _rev = await self.etcd.get(ident.key)
            if current is None:
                if sent is not None:
                    if create:
                        raise self._conflict(ident, sent, None)
                    raise NotFoundError(f"{ident.label} not found", resource=ident.label)
                if not create:
                    raise NotFoundError(f"{ident.label} not found", resource=ident.label)
                value = encode(
                    self._stored_value(validated, uid=str(uuid.uuid4()), created=now_timestamp())
                )
                if dry_run:
                    return StoredResource(ident.kind, ident.namespace, ident.name, 0, value)
                result = await self._write(
                    [Compare(ident.key, "create", "==", 0)], [Put(ident.key, value)]
                )
            else:
                if sent is not None and sent != current.mod_revision:
                    raise self._conflict(ident, sent, current)
                uid, created = self._server_fields(current)
                value = encode(self._stored_value(validated, uid=uid, created=created))
                if dry_run:
                    return StoredResource(
                        ident.kind, ident.namespace, ident.name, current.mod_revision, value
                    )
                result = await self._write(
                    [Compare(ident.key, "mod", "==", current.mod_revision)],
                    [Put(ident.key, value)],
                    [Get(ident.key)],
                )
                if not result.succeeded and sent is not None:
                    raise self._conflict(ident, sent, result.results[0])
            if result.succeeded:
                return self._written(ident, result.revision, value)
            log.debug("write raced another writer; retrying", resource=ident.label)
        raise RetriesExhaustedError(
            f"{ident.label}: gave up after {self.max_retries} attempts; other writers kept "
            "changing it",
            resource=ident.label,
        )

    async def delete(
        self,
        kind: str,
        name: str,
        namespace: str | None = None,
        resource_version: str | int | None = None,
    ) -> StoredResource:
        """Delete and return the last stored value (with its last resourceVersion)."""
        metric_kind = self._metric_kind({"kind": kind})
        with counted_write(metric_kind, "delete"):
            ident = self._ident(kind, name, namespace)
            sent = self._parse_version(resource_version, ident)
            compare = (
                Compare(ident.key, "mod", "==", sent)
                if sent is not None
                else Compare(ident.key, "version", ">", 0)
            )
            result = await self._write([compare], [Delete(ident.key)], [Get(ident.key)])
            prev = result.results[0]
            if not result.succeeded:
                if prev is None:
                    raise NotFoundError(f"{ident.label} not found", resource=ident.label)
                raise self._conflict(ident, sent or 0, prev)
            if prev is None:  # cannot happen: the compare said it existed
                raise NotFoundError(f"{ident.label} not found", resource=ident.label)
            return StoredResource(
                ident.kind, ident.namespace, ident.name, prev.mod_revision, prev.value
            )

    # -- resources: reads ----------------------------------------------------------------------

    async def get(self, kind: str, name: str, namespace: str | None = None) -> StoredResource:
        ident = self._ident(kind, name, namespace)
        kv, _ = await self.etcd.get(ident.key)
        if kv is None:
            raise NotFoundError(f"{ident.label} not found", resource=ident.label)
        return StoredResource(ident.kind, ident.namespace, ident.name, kv.mod_revision, kv.value)

    async def list(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        all_namespaces: bool = False,
        name_prefix: str = "",
    ) -> tuple[list[StoredResource], int]:
        """Resources of ``kind`` in key order, and the etcd revision of the read.

        A namespaced kind with no namespace (or ``all_namespaces``) lists every namespace.
        """
        info = self.kind_info(kind)
        canonical: str = info.kind
        ns = namespace if (info.namespaced and namespace and not all_namespaces) else None
        prefix = keys.resource_prefix(canonical, ns)
        scan_prefix = prefix
        if name_prefix and (ns is not None or not info.namespaced):
            scan_prefix = prefix + name_prefix
        kvs, revision = await self.etcd.get_prefix(scan_prefix)
        items: list[StoredResource] = []
        for kv in kvs:
            parsed = keys.parse_resource_key(kv.key)
            if parsed is None:
                continue
            pkind, pns, pname = parsed
            if pkind != canonical or (name_prefix and not pname.startswith(name_prefix)):
                continue
            items.append(StoredResource(canonical, pns or "", pname, kv.mod_revision, kv.value))
        return items, revision

    # -- start-up ------------------------------------------------------------------------------

    async def ensure_defaults(self, *, calico_version: str, cluster_type: str) -> None:
        """Create ClusterInformation ``default`` and the ``default`` Tier if absent.

        Existing objects are left alone (their clusterGUID is the cluster's identity).
        """
        defaults = [
            {
                "apiVersion": API_VERSION,
                "kind": "ClusterInformation",
                "metadata": {"name": "default"},
                "spec": {
                    "clusterGUID": uuid.uuid4().hex,
                    "calicoVersion": calico_version,
                    "datastoreReady": True,
                    "clusterType": cluster_type,
                },
            },
            {
                "apiVersion": API_VERSION,
                "kind": "Tier",
                "metadata": {"name": "default"},
                "spec": {"order": 1000000},
            },
        ]
        for resource in defaults:
            try:
                await self.create(resource)
                log.info("created default resource", kind=resource["kind"], name="default")
            except AlreadyExistsError:
                pass

    # -- raw keys ------------------------------------------------------------------------------

    @staticmethod
    def check_kv_key(key: str, *, prefix: bool = False) -> None:
        """Raw keys live under ``/calico/`` but outside the typed resources."""
        field = "prefix" if prefix else "key"
        root = RESOURCES_ROOT
        if not key.startswith("/calico/"):
            raise ValidationError(f"{key!r} is not under /calico/", field=field)
        if key.startswith(root) or (prefix and root.startswith(key)):
            where = "is inside" if key.startswith(root) else "covers"
            raise ValidationError(
                f"{key!r} {where} {root}; resources are read and written through the typed API",
                field=field,
            )

    async def kv_get(self, key: str) -> tuple[KV | None, int]:
        self.check_kv_key(key)
        return await self.etcd.get(key)

    async def kv_list(
        self, prefix: str, *, keys_only: bool = False
    ) -> tuple[builtins.list[KV], int]:
        self.check_kv_key(prefix, prefix=True)
        return await self.etcd.get_prefix(prefix, keys_only=keys_only)

    async def kv_txn(
        self, compares: Sequence[tuple[str, int]], ops: Sequence[KVWrite]
    ) -> KVTxnOutcome:
        """Apply ``ops`` if every ``(key, mod_revision)`` holds (0 = must not exist)."""
        with counted_write("kv", "txn") as outcome:
            for key, rev in compares:
                self.check_kv_key(key)
                if rev < 0:
                    raise ValidationError(f"mod_revision {rev} is negative", field=key)
            for op in ops:
                self.check_kv_key(op.key)
            etcd_ops: list[Op] = [Delete(op.key) if op.delete else Put(op.key, op.value)
                                  for op in ops]
            result = await self._write(
                [Compare(key, "mod", "==", rev) for key, rev in compares],
                etcd_ops,
                [Get(key) for key, _ in compares],
            )
            if result.succeeded:
                return KVTxnOutcome(True, result.revision, [])
            outcome.result = "failed"
            current = [kv for kv in result.results if kv is not None]
            return KVTxnOutcome(False, result.revision, current)
