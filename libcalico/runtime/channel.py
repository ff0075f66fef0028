"""Client channels: trace context out, domain errors back in, for all four call types.

``make_channel(target, service="datastore")`` returns a ``grpc.aio.Channel`` whose calls

- run in a CLIENT span named ``<package.Service>/<Method>`` (child of the caller's current
  span) whose context goes out as ``traceparent``/``tracestate`` metadata, so the server's span
  is its child; the span ends when the RPC reaches its status (including cancellation);
- raise ``libcalico.errors`` classes instead of ``grpc.aio.AioRpcError``: a status carrying
  ``calico-error-*`` trailing metadata becomes the class and message the server raised;
  UNAVAILABLE without it becomes ``UnavailableError("cannot reach the datastore at
  unix:///run/calico-lab/sock/datastore.sock: connection refused")``; any other status
  becomes the errors class for that code (``CalicoError`` for INTERNAL and the rest) with a
  message naming the service and target. The ``AioRpcError`` is kept as ``__cause__``.

How the streaming cases are handled. ``grpc.aio`` client interceptors can change the call's
details before it starts, but for anything after that they only return an object: a unary
interceptor may return the response (which loses trailing metadata and, for stream-unary, is
not allowed because the caller's ``call.write()`` waits on the interceptor), and a streaming
interceptor may return an async iterator (which breaks ``read()``/``write()``). So each
interceptor here returns a *wrapper call object* that subclasses the matching ``grpc.aio``
call ABC, delegates every method to the real call, and converts ``AioRpcError`` at the points
where a caller sees the outcome: ``await call`` (unary responses), ``async for`` / ``read()``
(streamed responses) and ``write()``/``done_writing()`` (streamed requests). Status accessors
(``code()``, ``details()``, ``trailing_metadata()``) still return the raw gRPC values, so a
caller that wants them can have them. Callers therefore use generated stubs exactly as usual:

    async with make_channel(cfg.datastore, service="datastore") as channel:
        stub = DatastoreStub(channel)
        resp = await stub.Get(req)                 # raises NotFoundError, UnavailableError, ...
        async for event in stub.Watch(watch_req):  # same conversion, also mid-stream
            ...

Code that holds a bare ``AioRpcError`` (a channel not made here) can call
``to_domain_error(err, target=..., service=...)``.

Overhead: measured in ``tests/integration/test_runtime_grpc.py`` — a unary call over a unix
socket with both interceptors and tracing to a batch exporter stays well under a millisecond
above the same call with no interceptors.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from libcalico.errors import (
    ERROR_CLASSES,
    CalicoError,
    UnavailableError,
    error_from_details,
)
from libcalico.runtime.interceptors import error_details_from_metadata
from libcalico.runtime.telemetry import TRACER_NAME, inject_headers

__all__ = ["DEFAULT_CHANNEL_OPTIONS", "make_channel", "to_domain_error"]

DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_metadata_size", 64 * 1024),
)

# First class in ERROR_CLASSES order for each code (ConflictError before its subclass).
_CLASS_FOR_CODE: dict[str, type[CalicoError]] = {}
for _cls in ERROR_CLASSES.values():
    _CLASS_FOR_CODE.setdefault(_cls.grpc_code, _cls)


_ERRNO_SUFFIX = re.compile(r"\s*\(\d+\)$")


def _unavailable_reason(details: str) -> str:
    """``connection refused`` out of gRPC's 'failed to connect to all addresses; last error:
    UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused', or out of
    iomgr's '...: connect: Connection refused (111)' (the errno is noise to a user)."""
    text = _ERRNO_SUFFIX.sub("", (details or "").rsplit(": ", 1)[-1].strip())
    return text[:1].lower() + text[1:] if text else "unavailable"


def to_domain_error(
    err: grpc.aio.AioRpcError, *, target: str, service: str, method: str = ""
) -> CalicoError:
    """The ``libcalico.errors`` exception for a failed call (see module docstring)."""
    details = error_details_from_metadata(err.trailing_metadata())
    if details is not None:
        details.setdefault("message", err.details() or "")
        return error_from_details(details)
    code: grpc.StatusCode = err.code()
    text = err.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        return UnavailableError(
            f"cannot reach the {service} at {target}: {_unavailable_reason(text)}"
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return UnavailableError(f"the {service} at {target} did not answer in time: {text}")
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return CalicoError(f"the {service} at {target} does not implement {method or text}")
    cls = _CLASS_FOR_CODE.get(code.name, CalicoError)
    message = f"{service} at {target}: {code.name}: {text}" if text else f"{service}: {code.name}"
    err_obj = cls.__new__(cls)
    CalicoError.__init__(err_obj, message)
    return err_obj


_Convert = Callable[[grpc.aio.AioRpcError], CalicoError]


def start_client_span(tracer: trace.Tracer, service: str, method: str, target: str) -> trace.Span:
    """The CLIENT span of one call of ``service/method`` to ``target``, with the attributes
    OpenTelemetry's RPC conventions give it; whatever carries the call (a unary RPC here, a
    message on the datastore's Session stream)."""
    return tracer.start_span(
        f"{service}/{method}",
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "server.address": target,
        },
    )


class _Delegate:
    """Everything a grpc.aio call offers, forwarded to the real call."""

    def __init__(self, call: Any, convert: _Convert) -> None:
        self._call = call
        self._convert = convert

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def time_remaining(self) -> float | None:
        result: float | None = self._call.time_remaining()
        return result

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _call: callback(self))

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        return await self._call.code()

    async def details(self) -> str:
        result: str = await self._call.details()
        return result

    async def debug_error_string(self) -> str | None:
        result: str | None = await self._call.debug_error_string()
        return result

    async def wait_for_connection(self) -> None:
        try:
            await self._call.wait_for_connection()
        except grpc.aio.AioRpcError as err:
            raise self._convert(err) from err


class _UnaryResponse(_Delegate):
    def __await__(self) -> Generator[Any, None, Any]:
        try:
            response = yield from self._call.__await__()
        except grpc.aio.AioRpcError as err:
            raise self._convert(err) from err
        return response


class _StreamResponse(_Delegate):
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        try:
            async for response in self._call:
                yield response
        except grpc.aio.AioRpcError as err:
            raise self._convert(err) from err

    async def read(self) -> Any:
        try:
            return await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise self._convert(err) from err


class _StreamRequest(_Delegate):
    async def write(self, request: Any) -> None:
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as err:
            raise self._convert(err) from err

    async def done_writing(self) -> None:
        try:
            await self._call.done_writing()
        except grpc.aio.AioRpcError as err:
            raise self._convert(err) from err

    @property
    def _done_writing_flag(self) -> bool:
        # grpc.aio's InterceptedCall.write() reads this private flag off the returned call.
        return bool(self._call._done_writing_flag)


class _UnaryUnaryCall(_UnaryResponse, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    pass


class _UnaryStreamCall(_StreamResponse, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    pass


class _StreamUnaryCall(_StreamRequest, _UnaryResponse, grpc.aio.StreamUnaryCall):  # type: ignore[misc]
    pass


class _StreamStreamCall(_StreamRequest, _StreamResponse, grpc.aio.StreamStreamCall):  # type: ignore[misc]
    pass


_tracer = trace.get_tracer(TRACER_NAME)
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _finished_code(call: Any) -> grpc.StatusCode | None:
    """The status of a finished call without awaiting, if grpc.aio lets us see it.

    ``call.code()`` is a coroutine; awaiting it from a done callback needs a task per RPC, which
    measurably adds latency. grpc.aio's own calls keep the received status on the Cython call
    object, so read it there and fall back to the coroutine if that ever changes.
    """
    if call.cancelled():
        return grpc.StatusCode.CANCELLED
    status = getattr(getattr(call, "_cython_call", None), "_status", None)
    code = getattr(status, "code", None)
    if not callable(code):
        return None
    return _CODES_BY_NUMBER.get(code())


def _close_span(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


async def _end_span_later(call: Any, span: trace.Span) -> None:
    try:
        code: grpc.StatusCode = await call.code()
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
    _close_span(span, code)


class _Base:
    """Shared by the four interceptor classes (grpc.aio files an interceptor under the first
    arity it matches, so one class cannot serve all four)."""

    def __init__(self, target: str, service: str) -> None:
        self.target = target
        self.service = service
        self._tracer = _tracer
        self._tasks: set[asyncio.Task[None]] = set()

    def _begin(self, details: Any) -> tuple[Any, trace.Span | None, _Convert]:
        method = details.method
        method_name = method.decode() if isinstance(method, bytes) else str(method)

        def convert(err: grpc.aio.AioRpcError) -> CalicoError:
            return to_domain_error(
                err, target=self.target, service=self.service, method=method_name
            )

        service, _, rpc_method = method_name.lstrip("/").partition("/")
        span = start_client_span(self._tracer, service, rpc_method, self.target)
        if not span.is_recording():
            return details, None, convert
        carrier: dict[str, str] = {}
        inject_headers(carrier, trace.set_span_in_context(span))
        metadata = grpc.aio.Metadata()
        if details.metadata:
            for key, value in details.metadata:
                metadata.add(key, value)
        for key, value in carrier.items():
            metadata.add(key, value)
        new_details = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )
        return new_details, span, convert

    def _track(self, call: Any, span: trace.Span | None) -> None:
        if span is None:
            return

        def on_done(done_call: Any) -> None:
            code = _finished_code(done_call)
            if code is not None:
                _close_span(span, code)
                return
            try:
                task = asyncio.get_running_loop().create_task(_end_span_later(done_call, span))
            except RuntimeError:  # loop closing: end without a status
                span.end()
                return
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            call.add_done_callback(on_done)
        except NotImplementedError:
            # An inner interceptor returned a finished response object (no callbacks).
            span.end()


class _UnaryUnary(_Base, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details, span, convert = self._begin(details)
        call = await continuation(details, request)
        self._track(call, span)
        return _UnaryUnaryCall(call, convert)


class _UnaryStream(_Base, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        details, span, convert = self._begin(details)
        call = await continuation(details, request)
        self._track(call, span)
        return _UnaryStreamCall(call, convert)


class _StreamUnary(_Base, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        details, span, convert = self._begin(details)
        call = await continuation(details, request_iterator)
        self._track(call, span)
        return _StreamUnaryCall(call, convert)


class _StreamStream(_Base, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        details, span, convert = self._begin(details)
        call = await continuation(details, request_iterator)
        self._track(call, span)
        return _StreamStreamCall(call, convert)


def client_interceptors(target: str, service: str) -> list[grpc.aio.ClientInterceptor]:
    """The four interceptors ``make_channel`` installs (for callers building channels)."""
    return [
        _UnaryUnary(target, service),
        _UnaryStream(target, service),
        _StreamUnary(target, service),
        _StreamStream(target, service),
    ]


def make_channel(
    target: str,
    *,
    service: str,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """An insecure ``grpc.aio`` channel to ``target`` (``unix:///path.sock`` or ``host:port``).

    ``service`` names the peer in error messages ("cannot reach the datastore at ...").
    Must be called with an event loop running (grpc.aio binds the channel to it). Extra
    ``interceptors`` run inside ours (they see the trace metadata and raw errors).
    """
    merged = dict(DEFAULT_CHANNEL_OPTIONS)
    merged.update(dict(options))
    return grpc.aio.insecure_channel(
        target,
        options=list(merged.items()),
        interceptors=[*client_interceptors(target, service), *interceptors],
    )
