"""The client half of the Datastore ``Session`` stream (see ``services.datastore.session``).

``SessionStream`` is one open stream: ``submit(call)`` queues a ``SessionCall`` and returns a
future of its ``SessionResult``; one writer task sends whatever queued up as one message, one
reader task resolves futures by call id. ``DatastoreClient`` owns at most one stream at a time,
opens it on first use and opens a new one after a failure.

How a call ends when the stream does not:

- **never sent** (still queued here when the stream failed, its write failed because the
  stream had already ended, or the server ended the stream with OK without answering it —
  the server only does that for calls it never read):
  ``NotSent``; the caller sends it again on a new stream;
- **the server has no Session** (UNIMPLEMENTED): ``SessionUnsupported``; the call was not run,
  the caller uses the unary RPC instead;
- **in flight when the stream broke**: ``UnavailableError`` — it may or may not have been
  applied, exactly as a unary RPC that lost its connection. A status the runtime maps to
  another class (CANCELLED, INTERNAL, ...) still becomes ``UnavailableError`` naming it: the
  call did not fail, the stream did.

The stream runs on a channel without the runtime's client interceptors: they would open one
CLIENT span for the whole stream, a root span in the caller's trace file that outlives every
command (``calico-lab trace --last`` would pick it), and wrap every read and write. Spans per
call and error mapping are done here and in ``DatastoreClient`` with the runtime's helpers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from libcalico.api.datastore.v1 import datastore_pb2 as pb
from libcalico.errors import CalicoError, UnavailableError
from libcalico.runtime.channel import to_domain_error

__all__ = ["NotSent", "SessionStream", "SessionUnsupported", "error_from_result"]

GRPC_SERVICE: str = pb.DESCRIPTOR.services_by_name["Datastore"].full_name
SESSION_METHOD = f"/{GRPC_SERVICE}/Session"
#: Calls per request message, and the bytes of resource JSON one message may carry (the
#: channel's limit is 64 MiB; a batch stays far below it whatever the callers send).
MAX_CALLS_PER_MESSAGE = 256
MAX_BYTES_PER_MESSAGE = 4 * 1024 * 1024


class SessionUnsupported(Exception):
    """The server does not implement ``Session``; the call was not run."""


class NotSent(Exception):
    """The call never reached the server's handler; sending it again is safe. ``cause`` is
    why the stream ended, when it failed (what to report if sending again keeps failing)."""

    def __init__(self, cause: CalicoError | None = None) -> None:
        super().__init__(cause)
        self.cause = cause


def error_from_result(
    error: pb.SessionError, *, target: str, service: str, method: str
) -> CalicoError:
    """The ``libcalico.errors`` exception for a call's ``SessionError``: the very mapping
    ``make_channel`` applies to a failed unary RPC (status code, details, ``calico-error-*``
    trailing metadata), fed the same values."""
    try:
        code = grpc.StatusCode[error.code]
    except KeyError:
        code = grpc.StatusCode.UNKNOWN
    rpc_error = grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*error.metadata.items()),
        details=error.message,
    )
    return to_domain_error(rpc_error, target=target, service=service, method=method)


class SessionStream:
    """One open Session stream on ``channel`` (see the module docstring)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        target: str,
        service: str,
        on_broken: Callable[[SessionStream], None] = lambda _: None,
    ) -> None:
        self.target = target
        self.service = service
        self._on_broken = on_broken
        method = channel.stream_stream(
            SESSION_METHOD,
            request_serializer=pb.SessionRequest.SerializeToString,
            response_deserializer=pb.SessionResponse.FromString,
        )
        # No wait_for_ready: like the unary calls, a server that is not there fails the call at
        # once (UnavailableError) instead of queueing it.
        self._call: Any = method()
        self._futures: dict[int, asyncio.Future[pb.SessionResult]] = {}
        self._outbox: list[tuple[pb.SessionCall, int]] = []
        #: Ids of calls whose write failed: never sent, whatever the stream's status says.
        self._unwritten: set[int] = set()
        self._wake = asyncio.Event()
        #: Set once the stream has failed or been closed; no call is accepted after that.
        self.broken = False
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write())
        self._reader = loop.create_task(self._read())

    def submit(self, call: pb.SessionCall, size: int = 0) -> asyncio.Future[pb.SessionResult]:
        """Queue ``call`` (``size``: bytes of resource JSON it carries); its future resolves to
        its result or raises ``NotSent``, ``SessionUnsupported`` or ``UnavailableError``."""
        future: asyncio.Future[pb.SessionResult] = asyncio.get_running_loop().create_future()
        if self.broken:
            future.set_exception(NotSent())
            return future
        self._futures[call.id] = future
        self._outbox.append((call, size))
        self._wake.set()
        return future

    async def close(self) -> None:
        """End the stream; calls still waiting fail with ``UnavailableError``."""
        self._fail(lambda: UnavailableError(f"the {self.service} client was closed"), None)
        for task in (self._writer, self._reader):
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)

    # -- the two tasks -------------------------------------------------------------------------

    def _next_batch(self) -> list[pb.SessionCall]:
        outbox = self._outbox
        batch: list[pb.SessionCall] = []
        total = 0
        for call, size in outbox:
            if batch and (len(batch) >= MAX_CALLS_PER_MESSAGE
                          or total + size > MAX_BYTES_PER_MESSAGE):  # fmt: skip
                break
            batch.append(call)
            total += size
        del outbox[: len(batch)]
        return batch

    async def _write(self) -> None:
        call = self._call
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    batch = self._next_batch()
                    try:
                        await call.write(pb.SessionRequest(calls=batch))
                    except grpc.aio.AioRpcError:
                        # gRPC core fails a send only when the call has already ended (the
                        # server closed the stream, or the connection went), so this batch was
                        # never written: it may be sent again. On iomgr's poller that failure
                        # can even land before the server's own status and overwrite it with
                        # INTERNAL; the reader reports the stream's end either way.
                        self._unwritten.update(c.id for c in batch)
                        return
        except (grpc.aio.UsageError, asyncio.InvalidStateError):
            # Written after the call ended: the reader has (or will have) its status.
            pass

    async def _read(self) -> None:
        call = self._call
        futures = self._futures
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                for result in response.results:
                    future = futures.pop(result.id, None)
                    if future is not None and not future.done():
                        future.set_result(result)
            code = await call.code()
        except grpc.aio.AioRpcError as err:
            self._broke(err)
            return
        if code is grpc.StatusCode.OK:
            # The server answers every call it read before it ends a session with OK (it does
            # so when stopping), so whatever is unanswered was never read: send it again.
            self._fail(NotSent, NotSent)
        else:
            details = await call.details()
            self._broke(grpc.aio.AioRpcError(code, None, await call.trailing_metadata(), details))

    # -- failure -------------------------------------------------------------------------------

    def _broke(self, err: grpc.aio.AioRpcError) -> None:
        if err.code() is grpc.StatusCode.UNIMPLEMENTED:
            self._fail(SessionUnsupported, SessionUnsupported)
            return

        def mapped() -> CalicoError:  # a fresh instance per call: each caller's traceback
            return to_domain_error(
                err, target=self.target, service=self.service, method=SESSION_METHOD
            )

        def unavailable() -> UnavailableError:
            error = mapped()
            if isinstance(error, UnavailableError):
                return error
            return UnavailableError(
                f"the session with the {self.service} at {self.target} broke ({error}); "
                "the request may or may not have been applied"
            )

        def unsent() -> NotSent:
            # The cause kept for the caller, should sending again keep failing: only a transport
            # failure says something true about the server; other codes can be gRPC's own
            # INTERNAL for a write onto a stream the server had just ended (iomgr's poller).
            error = mapped()
            return NotSent(error if isinstance(error, UnavailableError) else None)

        self._fail(unavailable, unsent)

    def _fail(
        self,
        sent_error: Callable[[], BaseException],
        unsent_error: Callable[[], BaseException] | None,
    ) -> None:
        """Fail every waiting call: ``unsent_error`` for those still queued here (or
        ``sent_error`` when ``None``), ``sent_error`` for those written. Idempotent."""
        if self.broken:
            return
        self.broken = True
        unsent = {call.id for call, _ in self._outbox} | self._unwritten
        self._outbox.clear()
        futures, self._futures = self._futures, {}
        for call_id, future in futures.items():
            if future.done():  # its caller gave up (timeout, cancellation)
                continue
            make = unsent_error if unsent_error is not None and call_id in unsent else sent_error
            future.set_exception(make())  # one instance per call: each caller's traceback
        self._call.cancel()
        if self._writer is not asyncio.current_task():
            self._writer.cancel()
        self._on_broken(self)
