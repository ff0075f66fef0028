"""The runtime over real gRPC: a grpc.aio server on a unix socket in tmp_path, a client channel.

The test service is built from generic method handlers on raw bytes, so no generated stubs
are needed: ``calico.test.v1.Probe`` with one method per call arity. Request bytes choose the
behaviour (``ok``, ``notfound``, ``invalid``, ``boom``, ...).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from libcalico.errors import (
    CalicoError,
    ConflictError,
    FailedPreconditionError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from libcalico.runtime import (
    Server,
    ServerSpec,
    force_flush_tracing,
    get_tracer,
    inject_traceparent,
    make_channel,
    setup_tracing,
    start_in_process,
)

SERVICE = "calico.test.v1.Probe"
REPO = Path(__file__).resolve().parents[2]


def _raise_for(req: bytes) -> None:
    if req == b"notfound":
        raise NotFoundError("Widget(w1) not found", resource="Widget(w1)")
    if req == b"invalid":
        raise ValidationError(
            "19 is out of range 20-32 for an IPv4 pool",
            resource="IPPool(default-ipv4-ippool)",
            field="spec.blockSize",
        )
    if req == b"unicode":
        raise ValidationError("naïve ☃ value 100%", field="metadata.name")
    if req == b"conflict":
        raise ConflictError("IPPool(p) was modified: resourceVersion 5 is stale")
    if req == b"boom":
        raise RuntimeError("boom")


async def _unary(req: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    _raise_for(req)
    if req == b"trace":
        return inject_traceparent().encode()
    if req == b"abort":
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
    return req


async def _server_stream(
    req: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    # "<n>" yields n items; "<n>:<err>" yields n items then raises per _raise_for(err);
    # "forever" yields one item and then waits like a watch with nothing to report.
    if req == b"forever":
        yield b"first"
        await asyncio.Event().wait()
    count, _, err = req.partition(b":")
    for i in range(int(count)):
        with get_tracer().start_as_current_span("step"):
            yield inject_traceparent().encode() or str(i).encode()
    _raise_for(err)


async def _client_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> bytes:
    total = 0
    async for req in requests:
        _raise_for(req)
        total += len(req)
    return str(total).encode()


async def _bidi(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for req in requests:
        _raise_for(req)
        yield req.upper()


def _register(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_unary),
                    "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
                    "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
                    "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
                },
            ),
        )
    )


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    setup_tracing("probe", jsonl=False, extra_processors=[SimpleSpanProcessor(exporter)])
    yield exporter
    exporter.clear()


@pytest.fixture
async def server(tmp_path: Path, spans: InMemorySpanExporter) -> AsyncIterator[Server]:
    spec = ServerSpec(
        service="probe",
        listen=[f"unix://{tmp_path}/sock/probe.sock"],
        register=_register,
        service_names=[SERVICE],
        grace=0.5,
    )
    srv = await start_in_process(spec)
    yield srv
    await srv.stop()


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with make_channel(server.target, service="probe service") as ch:
        yield ch


def _unary_method(ch: grpc.aio.Channel) -> Any:
    return ch.unary_unary(f"/{SERVICE}/Unary")


def _handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "calico_grpc_server_handled_total",
        {"service": SERVICE, "method": method, "code": code},
    )
    return value or 0.0


async def _settled(read: Callable[[], float | None], expected: float) -> float | None:
    """``read()`` once it equals ``expected``, or its last value after 2 s. The call is counted
    in the handler's ``finally``, which can run after the client has its status (``context.abort``
    sends it first; a cancelled stream's handler ends later), so a count read at once can be one
    short."""
    for _ in range(200):
        value = read()
        if value == expected:
            break
        await asyncio.sleep(0.01)
    return read()


# --- errors --------------------------------------------------------------------------------


async def test_unary_ok(channel: grpc.aio.Channel) -> None:
    assert await _unary_method(channel)(b"ok") == b"ok"


async def test_not_found_arrives_as_not_found_error(channel: grpc.aio.Channel) -> None:
    with pytest.raises(NotFoundError) as info:
        await _unary_method(channel)(b"notfound")
    assert str(info.value) == "Widget(w1) not found"
    assert info.value.resource == "Widget(w1)"
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    assert info.value.__cause__.code() is grpc.StatusCode.NOT_FOUND


async def test_validation_error_keeps_message_and_field(channel: grpc.aio.Channel) -> None:
    with pytest.raises(ValidationError) as info:
        await _unary_method(channel)(b"invalid")
    err = info.value
    assert err.message == (
        "IPPool(default-ipv4-ippool) spec.blockSize: 19 is out of range 20-32 for an IPv4 pool"
    )
    assert err.field == "spec.blockSize"
    assert err.resource == "IPPool(default-ipv4-ippool)"
    assert err.reason == "19 is out of range 20-32 for an IPv4 pool"


async def test_non_ascii_message_survives_metadata(channel: grpc.aio.Channel) -> None:
    with pytest.raises(ValidationError) as info:
        await _unary_method(channel)(b"unicode")
    assert str(info.value) == "metadata.name: naïve ☃ value 100%"
    assert info.value.field == "metadata.name"


async def test_raw_status_and_trailing_metadata(server: Server) -> None:
    # A plain channel (no runtime interceptors) sees the wire format other clients see.
    async with grpc.aio.insecure_channel(server.target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary(f"/{SERVICE}/Unary")(b"invalid")
    err = info.value
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("IPPool(default-ipv4-ippool) spec.blockSize: 19 is out")
    md = dict(err.trailing_metadata())
    assert md["calico-error-kind"] == "ValidationError"
    assert md["calico-error-field"] == "spec.blockSize"
    assert md["calico-error-resource"] == "IPPool(default-ipv4-ippool)"


async def test_unexpected_exception_is_internal(
    server: Server, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(CalicoError) as info:
        await _unary_method(channel)(b"boom")
    assert type(info.value) is CalicoError
    assert info.value.grpc_code == "INTERNAL"
    assert "RuntimeError: boom" in str(info.value)
    async with grpc.aio.insecure_channel(server.target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await ch.unary_unary(f"/{SERVICE}/Unary")(b"boom")
    assert raw.value.code() is grpc.StatusCode.INTERNAL
    assert any(
        r.getMessage() == "unhandled exception in rpc" and r.exc_info for r in caplog.records
    )


async def test_handler_abort_passes_through(channel: grpc.aio.Channel) -> None:
    before = _handled("Unary", "PERMISSION_DENIED")
    with pytest.raises(CalicoError) as info:
        await _unary_method(channel)(b"abort")
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    assert info.value.__cause__.code() is grpc.StatusCode.PERMISSION_DENIED
    assert await _settled(lambda: _handled("Unary", "PERMISSION_DENIED"), before + 1) == before + 1


async def test_server_stream_error_mid_stream(channel: grpc.aio.Channel) -> None:
    got: list[bytes] = []
    with pytest.raises(ConflictError) as info:
        async for item in channel.unary_stream(f"/{SERVICE}/ServerStream")(b"3:conflict"):
            got.append(item)
    assert len(got) == 3
    assert "resourceVersion 5 is stale" in str(info.value)


async def test_server_stream_read_api_converts_too(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream(f"/{SERVICE}/ServerStream")(b"1:notfound")
    assert await call.read() != grpc.aio.EOF
    with pytest.raises(NotFoundError):
        await call.read()


async def test_client_cancelling_a_stream_is_recorded(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    before = _handled("ServerStream", "CANCELLED")
    call = channel.unary_stream(f"/{SERVICE}/ServerStream")(b"forever")
    assert await call.read() == b"first"
    call.cancel()
    assert await _settled(lambda: _handled("ServerStream", "CANCELLED"), before + 1) == before + 1
    await asyncio.sleep(0.05)
    kinds = {s.kind for s in spans.get_finished_spans() if s.name.endswith("/ServerStream")}
    assert kinds == {trace.SpanKind.CLIENT, trace.SpanKind.SERVER}


async def test_client_stream_ok_and_error(channel: grpc.aio.Channel) -> None:
    method = channel.stream_unary(f"/{SERVICE}/ClientStream")
    assert await method(iter([b"ab", b"cde"])) == b"5"
    with pytest.raises(NotFoundError):
        await method(iter([b"ab", b"notfound"]))
    # the write() API goes through the interceptor's wrapper as well
    call = method()
    await call.write(b"abc")
    await call.done_writing()
    assert await call == b"3"


async def test_bidi_stream_ok_and_error(channel: grpc.aio.Channel) -> None:
    method = channel.stream_stream(f"/{SERVICE}/Bidi")
    assert [r async for r in method(iter([b"a", b"b"]))] == [b"A", b"B"]
    got: list[bytes] = []
    with pytest.raises(ValidationError) as info:
        async for r in method(iter([b"x", b"invalid", b"y"])):
            got.append(r)
    assert got == [b"X"]
    assert info.value.field == "spec.blockSize"
    call = method()
    await call.write(b"q")
    assert await call.read() == b"Q"
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF


async def test_unavailable_names_the_target(tmp_path: Path) -> None:
    target = f"unix://{tmp_path}/nobody.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "nobody.sock"))  # a socket file nobody listens on
    sock.close()
    async with make_channel(target, service="datastore") as ch:
        with pytest.raises(UnavailableError) as info:
            await _unary_method(ch)(b"ok", timeout=5)
    assert str(info.value) == f"cannot reach the datastore at {target}: connection refused"


async def test_unknown_method_and_deadline(server: Server, channel: grpc.aio.Channel) -> None:
    with pytest.raises(CalicoError) as info:
        await channel.unary_unary(f"/{SERVICE}/Nope")(b"x")
    assert str(info.value) == (
        f"the probe service at {server.target} does not implement /{SERVICE}/Nope"
    )
    with pytest.raises(UnavailableError, match="did not answer in time"):
        async for _ in channel.unary_stream(f"/{SERVICE}/ServerStream")(b"forever", timeout=0.3):
            pass


async def test_unavailable_over_tcp_and_missing_socket(tmp_path: Path) -> None:
    from libcalico.testing import free_port

    for target, reason in [
        (f"127.0.0.1:{free_port()}", "connection refused"),
        (f"unix://{tmp_path}/missing.sock", "no such file or directory"),
    ]:
        async with make_channel(target, service="ipam service") as ch:
            with pytest.raises(UnavailableError) as info:
                await _unary_method(ch)(b"ok", timeout=5)
        assert str(info.value) == f"cannot reach the ipam service at {target}: {reason}"


# --- tracing -------------------------------------------------------------------------------


async def test_unary_trace_propagates(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    with get_tracer().start_as_current_span("caller") as caller:
        seen = (await _unary_method(channel)(b"trace")).decode()
    await asyncio.sleep(0.05)  # client span ends from the call's done callback
    by_kind = {s.kind: s for s in spans.get_finished_spans() if s.name == f"{SERVICE}/Unary"}
    client, srv = by_kind[trace.SpanKind.CLIENT], by_kind[trace.SpanKind.SERVER]
    trace_id = caller.get_span_context().trace_id
    assert client.context.trace_id == srv.context.trace_id == trace_id
    assert client.parent is not None and client.parent.span_id == caller.get_span_context().span_id
    assert srv.parent is not None and srv.parent.span_id == client.context.span_id
    assert srv.attributes is not None
    assert srv.attributes["rpc.method"] == "Unary"
    assert srv.attributes["rpc.service"] == SERVICE
    assert srv.attributes["rpc.grpc.status_code"] == 0
    assert srv.attributes["calico.service"] == "probe"
    # inside the handler the server span was current
    assert seen.startswith(f"00-{trace_id:032x}-{srv.context.span_id:016x}-")


async def test_server_stream_trace_propagates(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    with get_tracer().start_as_current_span("caller") as caller:
        items = [i async for i in channel.unary_stream(f"/{SERVICE}/ServerStream")(b"2")]
    await asyncio.sleep(0.05)
    finished = spans.get_finished_spans()
    client = next(s for s in finished if s.kind is trace.SpanKind.CLIENT)
    srv = next(s for s in finished if s.kind is trace.SpanKind.SERVER)
    steps = [s for s in finished if s.name == "step"]
    trace_id = caller.get_span_context().trace_id
    assert client.context.trace_id == srv.context.trace_id == trace_id
    assert srv.parent is not None and srv.parent.span_id == client.context.span_id
    assert srv.name == f"{SERVICE}/ServerStream"
    # spans opened inside the generator are children of the server span
    assert len(steps) == 2
    assert all(s.parent is not None and s.parent.span_id == srv.context.span_id for s in steps)
    assert [i.decode().split("-")[1] for i in items] == [f"{trace_id:032x}"] * 2


async def test_error_status_recorded_on_spans(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(CalicoError):
        await _unary_method(channel)(b"boom")
    await asyncio.sleep(0.05)
    srv = next(s for s in spans.get_finished_spans() if s.kind is trace.SpanKind.SERVER)
    client = next(s for s in spans.get_finished_spans() if s.kind is trace.SpanKind.CLIENT)
    assert srv.status.status_code is trace.StatusCode.ERROR
    assert srv.attributes is not None and srv.attributes["rpc.grpc.status_code"] == 13
    assert any(e.name == "exception" for e in srv.events)
    assert client.status.status_code is trace.StatusCode.ERROR


async def test_spans_reach_the_jsonl_file(server: Server, tmp_path: Path) -> None:
    trace_file = tmp_path / "traces.jsonl"
    setup_tracing("probe", jsonl_path=trace_file)
    async with make_channel(server.target, service="probe") as ch:
        with get_tracer().start_as_current_span("caller"):
            await _unary_method(ch)(b"ok")
    await asyncio.sleep(0.05)
    assert force_flush_tracing()
    lines = [json.loads(line) for line in trace_file.read_text().splitlines()]
    names = {(d["name"], d["kind"]) for d in lines}
    assert (f"{SERVICE}/Unary", "SERVER") in names
    assert (f"{SERVICE}/Unary", "CLIENT") in names
    assert len({d["trace_id"] for d in lines}) == 1
    assert all(d["service"] == "probe" for d in lines)


# --- health, reflection, metrics -----------------------------------------------------------


async def test_health_serving_and_not_serving(server: Server) -> None:
    async with grpc.aio.insecure_channel(server.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", SERVICE):
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        await server.set_serving(False)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_watch_sees_not_serving(server: Server) -> None:
    async with grpc.aio.insecure_channel(server.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        call = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        first = await call.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await server.set_serving(False, SERVICE)
        second = await call.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        call.cancel()


async def test_reflection_lists_services(server: Server) -> None:
    async with grpc.aio.insecure_channel(server.target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_metrics_count_rpcs_by_code(channel: grpc.aio.Channel) -> None:
    ok, nf = _handled("Unary", "OK"), _handled("Unary", "NOT_FOUND")
    count_before = REGISTRY.get_sample_value(
        "calico_grpc_server_handling_seconds_count", {"service": SERVICE, "method": "Unary"}
    )
    await _unary_method(channel)(b"ok")
    await _unary_method(channel)(b"ok")
    with pytest.raises(NotFoundError):
        await _unary_method(channel)(b"notfound")
    assert _handled("Unary", "OK") == ok + 2
    assert await _settled(lambda: _handled("Unary", "NOT_FOUND"), nf + 1) == nf + 1
    count_after = await _settled(lambda: REGISTRY.get_sample_value(
        "calico_grpc_server_handling_seconds_count", {"service": SERVICE, "method": "Unary"}
    ), (count_before or 0) + 3)  # fmt: skip
    assert count_after == (count_before or 0) + 3


async def test_metrics_endpoint_serves_the_counter(tmp_path: Path) -> None:
    from libcalico.testing import free_port

    port = free_port()
    spec = ServerSpec(
        service="probe",
        listen=[f"unix://{tmp_path}/m.sock"],
        register=_register,
        metrics_port=port,
    )
    async with Server(spec) as srv, make_channel(srv.target, service="probe") as ch:
        await _unary_method(ch)(b"ok")
        body = await asyncio.to_thread(_http_get, port)
    assert "calico_grpc_server_handled_total{" in body
    assert f'service="{SERVICE}"' in body


def _http_get(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


# --- lifecycle -----------------------------------------------------------------------------


async def test_socket_dir_created_stale_socket_replaced_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "probe.sock"
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # left behind by a killed process
    spec = ServerSpec(service="probe", listen=[f"unix://{path}"], register=_register)
    async with Server(spec) as srv, make_channel(srv.target, service="probe") as ch:
        assert await _unary_method(ch)(b"ok") == b"ok"
        # a second instance on the same socket is refused, not allowed to steal it
        with pytest.raises(FailedPreconditionError, match="another process is serving"):
            await start_in_process(spec)
    assert not path.exists()


async def test_tcp_port_zero_reports_bound_port(tmp_path: Path) -> None:
    spec = ServerSpec(service="probe", listen=["127.0.0.1:0"], register=_register)
    async with Server(spec) as srv, make_channel(srv.target, service="probe") as ch:
        assert srv.target.startswith("127.0.0.1:") and not srv.target.endswith(":0")
        assert await _unary_method(ch)(b"ok") == b"ok"


async def test_background_task_crash_stops_the_server(tmp_path: Path) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def crasher() -> None:
        await started.wait()
        raise KeyError("bug")

    async def loop() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    spec = ServerSpec(
        service="probe",
        listen=[f"unix://{tmp_path}/c.sock"],
        register=_register,
        tasks={"crasher": crasher, "loop": loop},
    )
    srv = await start_in_process(spec)
    with pytest.raises(ExceptionGroup) as info:
        await asyncio.wait_for(srv.wait(), 5)
    assert info.group_contains(KeyError)
    assert cancelled.is_set()
    assert srv.stopping.is_set()
    assert not (tmp_path / "c.sock").exists()
    with pytest.raises(ExceptionGroup):
        await srv.stop()


_MAIN = textwrap.dedent(
    """
    import asyncio, sys
    import grpc
    from libcalico.runtime import ServerSpec, run_main, serve, setup_logging

    async def amain():
        setup_logging("probe", "INFO", json=True)
        await serve(ServerSpec(service="probe", listen=[sys.argv[1]],
                               register=lambda s: None, grace=0.2,
                               tasks={"crash": crash} if sys.argv[2] == "crash" else {}))

    async def crash():
        await asyncio.sleep(0.2)
        raise ValueError("broken invariant")

    run_main(amain)
    """
)


def _spawn(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    sock = tmp_path / "p.sock"
    env = {**os.environ, "CALICO_TRACE_FILE": "off"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _MAIN, f"unix://{sock}", mode],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    return proc, sock


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)


def test_sigterm_stops_gracefully_with_status_zero(tmp_path: Path) -> None:
    proc, sock = _spawn(tmp_path, "serve")
    _wait_for(sock, proc)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "signal received; stopping" in events and events[-1] == "stopped"
    assert not sock.exists()


def test_crashed_task_exits_non_zero(tmp_path: Path) -> None:
    proc, sock = _spawn(tmp_path, "crash")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    crash = next(d for d in lines if d["event"] == "background task crashed; stopping the service")
    assert crash["task"] == "crash" and "ValueError: broken invariant" in crash["exc"]
    assert not sock.exists()


# --- overhead ------------------------------------------------------------------------------


async def test_interceptor_overhead_is_well_under_a_millisecond(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """Median unary latency with the full runtime vs a bare grpc.aio server and channel.

    Tracing goes to a BatchSpanProcessor (as in production), not the in-memory exporter.
    """
    setup_tracing("probe", jsonl_path=tmp_path / "t.jsonl")

    async def bare_unary(req: bytes, context: Any) -> bytes:
        return req

    bare = grpc.aio.server()
    bare.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(bare_unary)}
            ),
        )
    )
    bare.add_insecure_port(f"unix://{tmp_path}/bare.sock")
    await bare.start()
    spec = ServerSpec(service="probe", listen=[f"unix://{tmp_path}/rt.sock"], register=_register)

    async def median_us(ch: grpc.aio.Channel, n: int = 400) -> float:
        call = _unary_method(ch)
        for _ in range(50):
            await call(b"ok")
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await call(b"ok")
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1e6

    try:
        async with (
            Server(spec) as srv,
            make_channel(srv.target, service="probe") as rt_ch,
            grpc.aio.insecure_channel(f"unix://{tmp_path}/bare.sock") as bare_ch,
        ):
            bare_us = min([await median_us(bare_ch) for _ in range(3)])
            with get_tracer().start_as_current_span("bench"):
                rt_us = min([await median_us(rt_ch) for _ in range(3)])
    finally:
        await bare.stop(0)
    overhead = rt_us - bare_us
    print(f"bare {bare_us:.0f} us, runtime {rt_us:.0f} us, overhead {overhead:.0f} us")
    assert overhead < 500, f"interceptors add {overhead:.0f} us per unary call"
