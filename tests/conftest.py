"""Shared fixtures: a real etcd on free ports, the datastore service in-process, its client.

Fixture scopes and what each gives:

- ``etcd`` (module): an ``EtcdServer`` on free loopback ports with its data in a temp dir,
  shared by the tests of one module and always killed afterwards. Skips when no etcd binary.
- ``etcd_per_test`` (function): the same, private to one test — for tests that kill, restart
  or compact etcd. A module whose tests all need that overrides ``etcd``::

      @pytest.fixture
      def etcd(etcd_per_test):
          return etcd_per_test

- ``etcd_client`` (function): an ``aetcd.Client`` on ``etcd`` for reading and writing etcd
  directly (behind the service's back).
- ``datastore`` (function): the datastore service serving in the test's event loop on a unix
  socket, bound to ``etcd``; ``/calico/`` is emptied first, so every test starts from a
  fresh cluster (ClusterInformation and the default Tier only). ``datastore.graph`` exposes
  the store and watcher. Bookmarks every 0.2 s and a 3 s etcd wait keep tests quick
  (``datastore_options`` holds them; parametrize it to change them for one test).
- ``datastore_target`` (function): ``unix:///tmp/.../datastore.sock`` of that service.
- ``datastore_client`` (function): a ``DatastoreClient`` on it, closed afterwards.

Example::

    async def test_create(datastore_client):
        pool = await datastore_client.create(ippool("pool-a", "10.65.0.0/16"))
        assert pool["metadata"]["resourceVersion"]
"""

from __future__ import annotations

# Before anything loads grpc: importing libcalico picks gRPC core's I/O engine for this
# process, as in every calico-py process (libcalico.grpc_engine).
import libcalico  # noqa: F401

# isort: split
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aetcd
import pytest

from libcalico.client import DatastoreClient
from libcalico.etcd_server import DEFAULT_BINARY, EtcdServer
from libcalico.testing.datastore import InProcessDatastore, running_datastore, short_socket_dir


def _etcd_binary() -> str | None:
    return shutil.which("etcd") or (DEFAULT_BINARY if Path(DEFAULT_BINARY).exists() else None)


def _start_etcd(base: Path) -> EtcdServer:
    if _etcd_binary() is None:
        pytest.skip("etcd is not installed; run scripts/setup.sh")
    server = EtcdServer(base / "etcd")
    server.start()
    return server


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A real etcd for this test module (free ports, temp data dir, always killed)."""
    server = _start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def etcd_per_test(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real etcd for one test, which may kill, restart or compact it."""
    server = _start_etcd(tmp_path)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def etcd_client(etcd: EtcdServer) -> AsyncIterator[aetcd.Client]:
    """An ``aetcd.Client`` connected to ``etcd`` (to write behind the service's back)."""
    client = aetcd.Client(etcd.host, etcd.port)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def datastore_options() -> dict[str, float]:
    """Settings of the ``datastore`` fixture; a test overrides them with
    ``@pytest.mark.parametrize("datastore_options", [{...}])``."""
    return {"bookmark_interval": 0.2, "etcd_unavailable_wait": 3.0}


@pytest.fixture
async def datastore(
    etcd: EtcdServer, datastore_options: dict[str, float]
) -> AsyncIterator[InProcessDatastore]:
    """The datastore service in this event loop on a unix socket, over a wiped ``etcd``."""
    async with aetcd.Client(etcd.host, etcd.port) as raw:
        await raw.delete_prefix(b"/calico/")
    sock_dir = short_socket_dir()
    try:
        async with running_datastore(
            [etcd.endpoint],
            sock_dir / "datastore.sock",
            bookmark_interval=datastore_options.get("bookmark_interval", 0.2),
            etcd_unavailable_wait=datastore_options.get("etcd_unavailable_wait", 3.0),
        ) as ds:
            yield ds
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture
def datastore_target(datastore: InProcessDatastore) -> str:
    """The in-process datastore's gRPC target (``unix:///...``)."""
    return datastore.target


@pytest.fixture
async def datastore_client(datastore_target: str) -> AsyncIterator[DatastoreClient]:
    """A ``DatastoreClient`` on ``datastore_target``; closed after the test."""
    async with DatastoreClient(datastore_target) as client:
        yield client
