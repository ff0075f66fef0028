"""A small synchronous client of the datastore service for the ``calico`` CNI plugin.

Why not ``libcalico.client.DatastoreClient``: that client is asyncio and runs every call
through the runtime's interceptors and OpenTelemetry, which together cost the per-pod plugin
process ~250 ms of imports; this one needs only ``grpc`` and the generated messages (~90 ms,
imported when a ``CniStore`` is first made, so VERSION and config errors never pay it).

Errors the datastore raised come back as ``StoreError`` with the domain class name in ``kind``
(read from the ``calico-error-*`` trailing metadata, as ``libcalico.runtime.interceptors``
writes it); an unreachable service is ``kind == "UnavailableError"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from libcalico.cni.ipam_plugin import error_details

TIMEOUT = 30.0


class StoreError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class CniStore:
    """``get``/``apply``/``create``/``delete``/``list`` of resources as Calico's JSON."""

    def __init__(self, target: str, timeout: float = TIMEOUT) -> None:
        import grpc

        from libcalico.api.datastore.v1 import datastore_pb2, datastore_pb2_grpc

        self.grpc = grpc
        self.pb = datastore_pb2
        self.target = target
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target)
        self.stub = datastore_pb2_grpc.DatastoreStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except self.grpc.RpcError as err:
            details = error_details(err.trailing_metadata() or ())
            if details is not None:
                raise StoreError(
                    details.get("kind", ""), details.get("message", "") or str(err.details())
                ) from None
            code = err.code()
            if code in (self.grpc.StatusCode.UNAVAILABLE, self.grpc.StatusCode.DEADLINE_EXCEEDED):
                raise StoreError(
                    "UnavailableError",
                    f"cannot reach the calico-py datastore at {self.target}: "
                    f"{err.details() or code.name}",
                ) from None
            if code == self.grpc.StatusCode.NOT_FOUND:
                raise StoreError("NotFoundError", str(err.details())) from None
            raise StoreError(code.name, str(err.details())) from None

    @staticmethod
    def _decode(msg: Any) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(msg.json) if msg.json else {}
        meta = data.setdefault("metadata", {})
        if msg.resource_version:
            meta["resourceVersion"] = msg.resource_version
        return data

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """The resource, or None when it does not exist."""
        try:
            return self._decode(
                self._call("Get", self.pb.GetRequest(kind=kind, name=name, namespace=namespace))
            )
        except StoreError as err:
            if err.kind == "NotFoundError":
                return None
            raise

    def list(self, kind: str, namespace: str = "", name_prefix: str = "") -> list[dict[str, Any]]:
        resp = self._call(
            "List",
            self.pb.ListRequest(
                kind=kind, namespace=namespace, all_namespaces=not namespace,
                name_prefix=name_prefix,
            ),
        )
        return [self._decode(r) for r in resp.items]

    def _write(self, method: str, resource: Mapping[str, Any]) -> dict[str, Any]:
        body = json.dumps(resource, separators=(",", ":")).encode()
        return self._decode(self._call(method, self.pb.WriteRequest(json=body)))

    def create(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        return self._write("Create", resource)

    def update(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """Compare-and-swap on ``metadata.resourceVersion`` when it is set."""
        return self._write("Update", resource)

    def apply(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        return self._write("Apply", resource)

    def kv_exists(self, key: str) -> bool:
        """Whether a raw key (an IPAM handle, ...) exists."""
        resp = self._call("KVGet", self.pb.KVGetRequest(key=key))
        return bool(resp.HasField("kv"))

    def delete(
        self, kind: str, name: str, namespace: str = "", resource_version: str = ""
    ) -> bool:
        """Delete (only at ``resource_version`` when given); False when it was already gone."""
        try:
            self._call(
                "Delete",
                self.pb.DeleteRequest(
                    kind=kind, name=name, namespace=namespace, resource_version=resource_version
                ),
            )
        except StoreError as err:
            if err.kind == "NotFoundError":
                return False
            raise
        return True
