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

import os
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from libcalico.runtime.server import Server, start_in_process
from libcalico.testing.service_process import ServiceProcess
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
        graph.end_streams()  # as the service does: watches and sessions end, not sit out grace
        try:
            await server.stop(grace=0.5)
        finally:
            await graph.close()


class DatastoreProcess(ServiceProcess):
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
        target = f"unix://{Path(socket_path)}"
        super().__init__("calico-datastore", "services.datastore.main", socket_path, {
            "CALICO_DATASTORE_LISTEN": target,
            "CALICO_DATASTORE_ETCD_ENDPOINTS": ",".join(etcd_endpoints),
            "CALICO_DATASTORE_LOG_LEVEL": "WARNING",
            **(env or {}),
        }, log_path)
