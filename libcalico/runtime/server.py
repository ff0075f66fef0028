"""gRPC server bootstrap shared by every service: listen, serve, run loops, stop cleanly.

A service's ``main()`` describes its server in a ``ServerSpec`` and hands it to ``serve``::

    def main() -> None:
        run_main(amain)

    async def amain() -> None:
        cfg = load_config(DatastoreConfig, env_prefix="CALICO_DATASTORE_")
        setup_logging("datastore", cfg.log_level)
        setup_tracing("datastore", otlp_endpoint=cfg.otlp_endpoint, jsonl_path=cfg.trace_file)
        graph = build_graph(cfg)                         # the one wiring function
        await serve(ServerSpec(
            service="datastore",
            listen=cfg.listen,                            # ["unix:///run/.../datastore.sock"]
            register=lambda s: add_DatastoreServicer_to_server(graph.servicer, s),
            service_names=["calico.datastore.v1.Datastore"],
            tasks={"compactor": graph.compactor.run},
            metrics_port=cfg.metrics_port,
        ))

What ``Server`` does, in order:

1. builds a ``grpc.aio`` server, calls ``register(server)`` with it as an
   ``InstrumentedServer`` (every handler wrapped once with tracing, domain error → status,
   metrics), adds the standard health service
   (``grpc.health.v1``) and reflection for ``service_names`` plus health and reflection;
2. binds every listen address. ``unix:///path.sock``: creates the parent directory; an
   existing socket file nobody answers on is stale and removed, one somebody answers on means
   another instance is running, which is an error. ``host:port`` (port 0 picks one; see
   ``addresses``). ``SO_REUSEPORT`` is off so two instances cannot silently share a port;
3. starts serving, marks health SERVING (or NOT_SERVING with ``initially_serving=False`` until
   the service calls ``set_serving(True)``), starts the metrics endpoint;
4. runs the background ``tasks`` in one ``asyncio.TaskGroup`` (a process's own server,
   ``run(handle_signals=True)``, adds the sampler of ``runtime.cpu_affinity``, and only for
   ``cpu_affinity: adaptive``). A task that raises is a bug:
   it is logged with its traceback, the others are cancelled, the server stops and the
   exception propagates so the process exits non-zero (crash-only; the supervisor restarts
   it). A task that returns is logged and not restarted. Environment failures (etcd down) are
   the task's own business to retry;
5. on SIGTERM/SIGINT (``serve``) or ``stop()`` (in-process), in this order: sets
   ``stopping``; cancels the background tasks (their ``finally`` blocks may end long-lived
   streams); sets health NOT_SERVING; stops accepting RPCs and gives in-flight ones ``grace``
   seconds (a second signal cuts the grace short); stops the metrics endpoint; removes the
   unix socket files it created. Long-lived stream handlers should end when ``stopping`` is
   set rather than hold the grace period open.

``start_in_process(spec)`` (or ``async with Server(spec)``) does 1-4 in the current event
loop without signal handlers and returns the running ``Server``; ``await server.stop()`` ends
it and re-raises a background task's crash. Tests and ``libcalico.testing`` use it.

``run_main(amain)`` is the synchronous entry point: runs ``amain`` on a new event loop, then
exit status 0 after a clean stop, 2 for a ``ValidationError`` at start-up (bad config), 1 for
anything else, flushing traces either way. The loop is uvloop's when uvloop is installed (a
dependency; measured ~10% less CPU per RPC on the IPAM service's main thread, see
``bench/ipam.py``), else asyncio's; ``CALICO_EVENT_LOOP=asyncio`` forces asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from libcalico.errors import FailedPreconditionError, UnavailableError, ValidationError
from libcalico.runtime import log as _logmod
from libcalico.runtime.channel import DEFAULT_CHANNEL_OPTIONS
from libcalico.runtime.cpu_affinity import apply_cpu_affinity
from libcalico.runtime.interceptors import InstrumentedServer
from libcalico.runtime.log import get_logger
from libcalico.runtime.metrics import MetricsServer, start_metrics_server
from libcalico.runtime.telemetry import shutdown_tracing

__all__ = ["Server", "ServerSpec", "TaskFactory", "run_main", "serve", "start_in_process"]

TaskFactory = Callable[[], Coroutine[Any, Any, None]]

_log = get_logger(__name__)

HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
DEFAULT_SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    *DEFAULT_CHANNEL_OPTIONS,
    ("grpc.so_reuseport", 0),
)


@dataclass(frozen=True)
class ServerSpec:
    """Everything ``Server`` needs to know about one service's gRPC server."""

    service: str
    """Process name for logs, traces and metrics: ``datastore``, ``ipam``, ``calc_graph``."""
    listen: Sequence[str]
    """``unix:///path.sock`` and/or ``host:port`` addresses."""
    register: Callable[[grpc.aio.Server], None]
    """Adds the servicers (``add_XServicer_to_server(servicer, server)``)."""
    service_names: Sequence[str] = ()
    """Fully qualified gRPC service names: reflection lists them, health reports each."""
    tasks: Mapping[str, TaskFactory] = field(default_factory=dict)
    """Background loops by name; each factory is called once and awaited in the TaskGroup."""
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    grace: float = 3.0
    initially_serving: bool = True
    options: Sequence[tuple[str, Any]] = ()
    untraced_methods: Sequence[str] = ()
    """Full method names (``/pkg.Service/Method``) that get no span of their own."""
    cpu_affinity: str = "all"
    """``adaptive``, ``all`` or a CPU list (``cpu_affinity``); only a process's own server
    (``run(handle_signals=True)``, as ``serve`` does) applies it."""


class _StopRequested(Exception):
    """Raised inside the TaskGroup to end it when a stop is requested."""


def _unix_path(address: str) -> Path | None:
    if address.startswith("unix://"):
        return Path(address[len("unix://") :])
    if address.startswith("unix:"):
        return Path(address[len("unix:") :])
    return None


def _prepare_unix_socket(path: Path, address: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPreconditionError(
            f"cannot listen on {address}: {path} exists and is not a socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise FailedPreconditionError(f"cannot listen on {address}: {exc.strerror}") from None
        _log.info("removing stale socket", path=path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        raise FailedPreconditionError(
            f"cannot listen on {address}: another process is serving on {path}"
        )
    finally:
        probe.close()


class Server:
    """One service's gRPC server plus its background tasks (see module docstring)."""

    def __init__(self, spec: ServerSpec) -> None:
        if not spec.listen:
            raise ValidationError("at least one listen address is needed", field="listen")
        self.spec = spec
        self.addresses: list[str] = []
        """Bound addresses, with the chosen port for ``host:0``; ``addresses[0]`` is the target."""
        self.stopping = asyncio.Event()
        """Set when the server starts stopping; long-lived stream handlers should finish."""
        self._tasks: dict[str, TaskFactory] = dict(spec.tasks)
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._metrics: MetricsServer | None = None
        self._sockets: list[tuple[Path, tuple[int, int]]] = []
        self._stop_event = asyncio.Event()
        self._stop_grace: float | None = spec.grace
        self._crashed = False
        self._runner: asyncio.Task[None] | None = None
        self._stopped = False
        self._background: set[asyncio.Task[None]] = set()

    # --- public -----------------------------------------------------------------------

    @property
    def target(self) -> str:
        """A client target for this server (its first bound address)."""
        return self.addresses[0]

    @property
    def grpc_server(self) -> grpc.aio.Server:
        if self._server is None:
            raise RuntimeError("server not started")
        return self._server

    def add_task(self, name: str, factory: TaskFactory) -> None:
        """Add a background task before ``run``/``start_in_process``."""
        if self._runner is not None:
            raise RuntimeError("tasks must be added before the server runs")
        self._tasks[name] = factory

    async def set_serving(self, serving: bool, service: str | None = None) -> None:
        """Report SERVING/NOT_SERVING for ``service`` (default: the server and every service)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        names = [service] if service is not None else ["", *self.spec.service_names]
        for name in names:
            await self._health.set(name, status)
        _log.info("health", serving=serving, services=names)

    def request_stop(self, grace: float | None = None) -> None:
        """Begin a graceful stop (``grace`` overrides the spec's)."""
        if grace is not None:
            self._stop_grace = grace
        self.stopping.set()
        if self._stop_event.is_set():
            # Second request: in-flight RPCs are cut off now.
            self._stop_grace = 0
            if self._server is not None:
                task = asyncio.get_running_loop().create_task(self._server.stop(None))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        self._stop_event.set()

    async def start(self) -> None:
        """Build, bind and start the gRPC server and the metrics endpoint; health SERVING."""
        spec = self.spec
        options = dict(DEFAULT_SERVER_OPTIONS)
        options.update(dict(spec.options))
        server = InstrumentedServer(
            grpc.aio.server(options=list(options.items())),
            spec.service,
            untraced=spec.untraced_methods,
        )
        spec.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*spec.service_names, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        for address in spec.listen:
            self.addresses.append(self._bind(server, address))
        await server.start()
        self._server = server
        for address in spec.listen:
            path = _unix_path(address)
            if path is not None:
                with contextlib.suppress(OSError):
                    st = path.stat()
                    self._sockets.append((path, (st.st_dev, st.st_ino)))
        await self.set_serving(spec.initially_serving)
        try:
            self._metrics = start_metrics_server(spec.metrics_port, spec.metrics_addr)
        except OSError as exc:
            await server.stop(0)
            raise UnavailableError(
                f"cannot serve metrics on {spec.metrics_addr}:{spec.metrics_port}: {exc.strerror}"
            ) from None
        _log.info(
            "serving",
            service=spec.service,
            addresses=self.addresses,
            services=list(spec.service_names),
            metrics=f"{spec.metrics_addr}:{self._metrics.port}" if self._metrics else None,
        )

    async def run(self, *, handle_signals: bool = True) -> None:
        """Start (if not started), run the tasks and serve until stopped or a task crashes.

        With ``handle_signals`` this is the process's own server: it takes SIGTERM/SIGINT and
        applies ``spec.cpu_affinity`` to the process. In-process servers pass ``False``.
        """
        if handle_signals:
            adapt = apply_cpu_affinity(self.spec.cpu_affinity)
            if adapt is not None:
                self.add_task("cpu-affinity", adapt)
        if self._server is None:
            await self.start()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        try:
            async with asyncio.TaskGroup() as group:
                for name, factory in self._tasks.items():
                    group.create_task(self._supervise(name, factory), name=name)
                group.create_task(self._wait_for_stop_request(), name="stop-request")
        except* _StopRequested:
            pass
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self._shutdown()

    async def stop(self, grace: float | None = None) -> None:
        """Stop a server started with ``start_in_process``; re-raises a task's crash."""
        self.request_stop(grace)
        if self._runner is not None:
            await self._runner
        else:
            await self._shutdown()

    async def wait(self) -> None:
        """Wait until an in-process server has stopped (by ``stop()`` or a crash)."""
        if self._runner is not None:
            await asyncio.shield(self._runner)

    async def __aenter__(self) -> Server:
        await self.start()
        self._runner = asyncio.get_running_loop().create_task(self.run(handle_signals=False))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- internals --------------------------------------------------------------------

    def _bind(self, server: grpc.aio.Server, address: str) -> str:
        path = _unix_path(address)
        if path is not None:
            _prepare_unix_socket(path, address)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise UnavailableError(f"cannot listen on {address}: {exc}") from None
        if not port:
            raise UnavailableError(f"cannot listen on {address}")
        if path is not None:
            return address
        host = address.rsplit(":", 1)[0]
        return f"{host}:{port}"

    def _on_signal(self, sig: signal.Signals) -> None:
        _log.info("signal received; stopping", signal=sig.name, grace=self._stop_grace)
        self.request_stop()

    async def _wait_for_stop_request(self) -> NoReturn:
        await self._stop_event.wait()
        raise _StopRequested()

    async def _supervise(self, name: str, factory: TaskFactory) -> None:
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._crashed = True
            _log.error("background task crashed; stopping the service", task=name, exc_info=True)
            raise
        _log.info("background task finished", task=name)

    async def _shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        grace = min(self._stop_grace or 0.0, 0.5) if self._crashed else self._stop_grace
        _log.info("stopping", service=self.spec.service, grace=grace, crashed=self._crashed)
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        for path, ident in self._sockets:
            with contextlib.suppress(OSError):
                st = path.stat()
                if (st.st_dev, st.st_ino) == ident:
                    path.unlink()
        self._sockets.clear()
        _log.info("stopped", service=self.spec.service)


async def serve(spec: ServerSpec) -> None:
    """Run ``spec``'s server until SIGTERM/SIGINT; a crashed task's exception propagates."""
    await Server(spec).run(handle_signals=True)


async def start_in_process(spec: ServerSpec) -> Server:
    """Start ``spec``'s server in the running loop (no signal handlers); ``await s.stop()``."""
    server = Server(spec)
    return await server.__aenter__()


EVENT_LOOP_ENV = "CALICO_EVENT_LOOP"


def event_loop_factory(
    *, allow_uvloop: bool = True
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed and allowed, else ``None`` (asyncio's default loop).

    ``CALICO_EVENT_LOOP=asyncio`` forces the default loop (to compare, or to rule uvloop out
    when chasing a bug); ``uvloop`` or unset picks uvloop when it can be imported. The node
    agents pass ``allow_uvloop=False``: the dataplane driver's pyroute2 netlink sockets are
    datagram endpoints of family AF_NETLINK, which uvloop refuses ("invalid family 16"), and
    both agents run child processes, which uvloop forks with gRPC's threads running where
    asyncio's loop uses vfork. uvloop's gain is on the control-plane services' gRPC paths.
    """
    choice = os.environ.get(EVENT_LOOP_ENV, "").strip().lower()
    if choice == "asyncio" or not allow_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_main(amain: Callable[[], Coroutine[Any, Any, None]], *,
             allow_uvloop: bool = True) -> NoReturn:
    """``amain()`` on a fresh event loop (``event_loop_factory``) and exit: 0 when stopped,
    2 for bad config, 1 for a crash."""
    status = 0
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(allow_uvloop=allow_uvloop)) as runner:
            runner.run(amain())
    except KeyboardInterrupt:
        status = 130
    except BaseException as exc:  # crash-only: report, flush, exit non-zero
        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, SystemExit):
            raise
        status = 2 if isinstance(leaf, ValidationError) else 1
        if _logmod.is_configured():
            _log.error(
                "exiting",
                error=f"{type(leaf).__name__}: {leaf}",
                status=status,
                exc_info=status == 1,
            )
        else:
            print(f"{os.path.basename(sys.argv[0])}: {leaf}", file=sys.stderr)
    finally:
        shutdown_tracing()
    sys.exit(status)
