"""The Session stream's edges, with stand-in servers (no etcd): a stream that breaks under a call
in flight, a server without Session (fallback to unary), errors carried as trailing metadata
would carry them, and the server half's per-call error mapping."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from libcalico.api.datastore.v1 import datastore_pb2 as pb
from libcalico.client import DatastoreClient
from libcalico.client.session import error_from_result
from libcalico.errors import ConflictError, NotFoundError, UnavailableError
from libcalico.runtime.interceptors import error_metadata
from libcalico.testing.datastore import short_socket_dir
from services.datastore.session import GRPC_SERVICE, OPS, SessionHub

RESOURCE = pb.Resource(kind="IPPool", name="a", resource_version="7",
                       json=b'{"kind":"IPPool","metadata":{"name":"a"}}')  # fmt: skip


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = short_socket_dir("calico-sess-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def serve(
    sock: Path, handlers: dict[str, grpc.RpcMethodHandler]
) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GRPC_SERVICE,
                                                                          handlers),))  # fmt: skip
    target = f"unix://{sock}"
    server.add_insecure_port(target)
    await server.start()
    return server, target


def unary_get(calls: list[str]) -> grpc.RpcMethodHandler:
    async def get(request: pb.GetRequest, context: Any) -> pb.Resource:
        calls.append(request.name)
        return RESOURCE

    return grpc.unary_unary_rpc_method_handler(
        get, pb.GetRequest.FromString, pb.Resource.SerializeToString
    )


def session_handler(
    body: Callable[[Any, Any], AsyncIterator[pb.SessionResponse]],
) -> grpc.RpcMethodHandler:
    return grpc.stream_stream_rpc_method_handler(
        body, pb.SessionRequest.FromString, pb.SessionResponse.SerializeToString
    )


async def test_a_server_without_session_is_called_unary(sock_dir: Path) -> None:
    calls: list[str] = []
    server, target = await serve(sock_dir / "old.sock", {"Get": unary_get(calls)})
    try:
        async with DatastoreClient(target) as client:
            first, second = await asyncio.gather(client.get("IPPool", "a"),
                                                 client.get("IPPool", "b"))  # fmt: skip
            assert first["metadata"]["resourceVersion"] == "7"
            assert second["metadata"]["name"] == "a"
            assert client.use_session is False  # decided once, for the client's life
            await client.get("IPPool", "c")
        assert sorted(calls) == ["a", "b", "c"]
    finally:
        await server.stop(0)


async def test_a_call_in_flight_when_the_stream_breaks_is_unavailable(sock_dir: Path) -> None:
    received = asyncio.Event()

    async def session(requests: Any, context: Any) -> AsyncIterator[pb.SessionResponse]:
        async for _request in requests:
            received.set()
            await asyncio.Event().wait()  # never answers
        yield pb.SessionResponse()  # pragma: no cover

    server, target = await serve(sock_dir / "ds.sock", {"Session": session_handler(session)})
    try:
        async with DatastoreClient(target) as client:
            pending = asyncio.ensure_future(client.get("IPPool", "a"))
            await asyncio.wait_for(received.wait(), 5)
            await server.stop(0)  # the stream breaks with the call in flight
            with pytest.raises(UnavailableError):
                await asyncio.wait_for(pending, 5)
            # The next call opens a new stream, which fails fast: nobody listens any more.
            with pytest.raises(UnavailableError, match="cannot reach the datastore"):
                await asyncio.wait_for(client.get("IPPool", "a"), 5)
    finally:
        await server.stop(0)


async def test_an_aborted_session_fails_its_calls_as_unavailable(sock_dir: Path) -> None:
    async def session(requests: Any, context: Any) -> AsyncIterator[pb.SessionResponse]:
        async for _request in requests:
            await context.abort(grpc.StatusCode.INTERNAL, "boom")
        yield pb.SessionResponse()  # pragma: no cover

    server, target = await serve(sock_dir / "ds.sock", {"Session": session_handler(session)})
    try:
        async with DatastoreClient(target) as client:
            with pytest.raises(UnavailableError, match=r"broke .*INTERNAL.*may or may not"):
                await asyncio.wait_for(client.get("IPPool", "a"), 5)
    finally:
        await server.stop(0)


async def test_a_timeout_is_unavailable_and_the_late_answer_is_dropped(sock_dir: Path) -> None:
    async def session(requests: Any, context: Any) -> AsyncIterator[pb.SessionResponse]:
        async for request in requests:
            for call in request.calls:
                if call.get.name == "slow":
                    await asyncio.sleep(0.3)
                yield pb.SessionResponse(results=[pb.SessionResult(id=call.id,
                                                                   resource=RESOURCE)])  # fmt: skip

    server, target = await serve(sock_dir / "ds.sock", {"Session": session_handler(session)})
    try:
        async with DatastoreClient(target, timeout=0.1) as client:
            with pytest.raises(UnavailableError, match="did not answer in time"):
                await client.get("IPPool", "slow")
            await asyncio.sleep(0.3)
            assert (await client.get("IPPool", "fast"))["metadata"]["name"] == "a"
    finally:
        await server.stop(0)


def test_session_errors_decode_like_trailing_metadata() -> None:
    err = ConflictError("IPPool(a) metadata.resourceVersion: version 3 is stale; current is 5",
                        resource="IPPool(a)", field="metadata.resourceVersion",
                        reason="version 3 is stale; current is 5 — ünïcode")  # fmt: skip
    wire = pb.SessionError(code="ABORTED", message=err.message, metadata=dict(error_metadata(err)))
    back = error_from_result(wire, target="unix:///x.sock", service="datastore", method="/m")
    assert type(back) is ConflictError
    assert (back.message, back.resource, back.field, back.reason) == (
        err.message, err.resource, err.field, err.reason
    )
    plain = error_from_result(
        pb.SessionError(code="NOT_FOUND", message="gone"),
        target="unix:///x.sock", service="datastore", method="/m",
    )  # fmt: skip
    assert type(plain) is NotFoundError and "gone" in str(plain)


async def _responses(hub: SessionHub, calls: list[pb.SessionCall]) -> list[pb.SessionResult]:
    async def requests() -> AsyncIterator[pb.SessionRequest]:
        yield pb.SessionRequest(calls=calls)

    out: list[pb.SessionResult] = []
    async for response in hub.serve(requests()):
        out.extend(response.results)
    return sorted(out, key=lambda r: r.id)


async def test_the_server_half_maps_each_calls_outcome() -> None:
    async def get(request: pb.GetRequest, context: Any) -> pb.Resource:
        if request.name == "missing":
            raise NotFoundError("IPPool(missing) not found", resource="IPPool(missing)")
        if request.name == "bug":
            raise RuntimeError("boom")
        return RESOURCE

    async def unused(request: Any, context: Any) -> Any:
        raise AssertionError("not called")

    handlers = {method: unused for method, _ in OPS.values()}
    handlers["Get"] = get
    hub = SessionHub(handlers, max_in_flight=2)
    calls = [pb.SessionCall(id=i, get=pb.GetRequest(kind="IPPool", name=name))
             for i, name in enumerate(["a", "missing", "bug", "b"], start=1)]  # fmt: skip
    calls.append(pb.SessionCall(id=5))  # no operation: a newer client's, say
    ok, missing, bug, ok2, empty = await _responses(hub, calls)
    assert ok.resource == RESOURCE and ok2.resource == RESOURCE
    assert missing.error.code == "NOT_FOUND"
    assert dict(missing.error.metadata) == dict(
        error_metadata(NotFoundError("IPPool(missing) not found", resource="IPPool(missing)"))
    )
    assert bug.error.code == "INTERNAL" and bug.error.message == "RuntimeError: boom"
    assert not bug.error.metadata
    assert empty.error.code == "UNIMPLEMENTED"
    assert hub.open_sessions == 0
