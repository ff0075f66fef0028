"""The datastore service for tests, benches and the lab: in this process, or as its own process.

``running_datastore(endpoints, socket)``: an async context manager that serves the real
Datastore gRPC service (servicer, interceptors, health) in the current event loop on a unix
socket, bound to the given etcd. Tests use it through the ``datastore`` fixture::

    async with running_datastore([etcd.endpoint], "/tmp/x/ds.sock") as ds:
        async with DatastoreClient(ds.target) as client:
            await client.create(pool)

``DatastoreProcess``: ``calico-datastore`` (the console entry point) as a child process with
its settings in the environment, waited for until its health check answers SERVING, always
stopped (SIGTERM, then SIGKILL) — the bench and the lab use it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from libcalico.runtime.server import Server, start_in_process
from services.datastore.config import DatastoreConfig
from services.datastore.main import DatastoreGraph, build, ensure_defaults, server_spec


def short_socket_dir(prefix: str = "calico-ds-") -> Path:
    """A fresh directory under /tmp whose socket paths stay within the 107-byte limit."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class InProcessDatastore:
    """A running in-process datastore service."""

    target: str
    """``unix:///.../datastore.sock``: pass to ``DatastoreClient``."""
    graph: DatastoreGraph
    server: Server


@asynccontextmanager
async def running_datastore(
    etcd_endpoints: Sequence[str],
    socket_path: str | os.PathLike[str],
    *,
    bookmark_interval: float = 5.0,
    etcd_unavailable_wait: float = 10.0,
) -> AsyncIterator[InProcessDatastore]:
    """Serve the datastore on ``unix://<socket_path>`` in this loop; stopped on exit."""
    cfg = DatastoreConfig(
        listen=(f"unix://{socket_path}",),
        etcd_endpoints=tuple(etcd_endpoints),
        bookmark_interval=bookmark_interval,
        etcd_unavailable_wait=etcd_unavailable_wait,
    )
    graph = build(cfg)
    server = await start_in_process(server_spec(graph, cfg))
    try:
        await ensure_defaults(graph, cfg)
        await server.set_serving(True)
        yield InProcessDatastore(server.target, graph, server)
    finally:
        graph.watcher.close()
        try:
            await server.stop(grace=0.5)
        finally:
            await graph.etcd.close()


def datastore_command() -> list[str]:
    """The ``calico-datastore`` entry point next to this interpreter (or on PATH)."""
    candidate = Path(sys.executable).with_name("calico-datastore")
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("calico-datastore")
    if found:
        return [found]
    return [sys.executable, "-m", "services.datastore.main"]


class DatastoreProcess:
    """``calico-datastore`` as a child process serving on ``unix://<socket_path>``.

    ``env`` adds ``CALICO_DATASTORE_*`` settings; logs go to ``log_path``.
    """

    def __init__(
        self,
        etcd_endpoints: Sequence[str],
        socket_path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.target = f"unix://{self.socket_path}"
        self.log_path = Path(log_path) if log_path else self.socket_path.with_suffix(".log")
        self.env = {
            **os.environ,
            "CALICO_DATASTORE_LISTEN": self.target,
            "CALICO_DATASTORE_ETCD_ENDPOINTS": ",".join(etcd_endpoints),
            "CALICO_DATASTORE_LOG_LEVEL": "WARNING",
            "CALICO_TRACE_FILE": "off",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                datastore_command(),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    async def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until its health check says SERVING."""
        self._spawn()
        try:
            await self._wait_serving(timeout)
        except BaseException:
            self.stop()
            raise

    async def _wait_serving(self, timeout: float) -> None:
        import grpc.aio
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"calico-datastore exited with {self.proc.returncode}: {self.log_tail()}"
                )
            if self.socket_path.exists():
                async with grpc.aio.insecure_channel(self.target) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    try:
                        resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                        if resp.status == health_pb2.HealthCheckResponse.SERVING:
                            return
                    except grpc.aio.AioRpcError:
                        pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"calico-datastore not serving after {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def __aenter__(self) -> DatastoreProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
