"""``calico-datastore`` as its own process: config from the environment, health, metrics,
SIGTERM ends it cleanly and removes its socket."""

from __future__ import annotations

import asyncio
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from libcalico.client import DatastoreClient
from libcalico.etcd_server import EtcdServer
from libcalico.testing import free_port
from libcalico.testing.datastore import DatastoreProcess, short_socket_dir


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text: str = resp.read().decode()
    return text


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = short_socket_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_entry_point_serves_and_stops_cleanly(etcd: EtcdServer, sock_dir: Path) -> None:
    port = free_port()
    proc = DatastoreProcess(
        [etcd.endpoint],
        sock_dir / "datastore.sock",
        env={"CALICO_DATASTORE_METRICS_PORT": str(port)},
    )
    await proc.start()
    try:
        async with DatastoreClient(proc.target) as client:
            info = await client.get("ClusterInformation", "default")
            assert info["spec"]["datastoreReady"] is True
            await client.apply({
                "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                "metadata": {"name": "proc-pool"}, "spec": {"cidr": "10.90.0.0/16"},
            })  # fmt: skip
        text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
        assert 'calico_datastore_writes_total{kind="IPPool",op="apply",result="ok"}' in text
        assert "calico_datastore_etcd_seconds_count" in text
        assert "calico_datastore_watch_streams" in text
    finally:
        assert proc.proc is not None
        popen = proc.proc
        proc.stop()
    assert popen.returncode == 0, proc.log_tail()
    assert not (sock_dir / "datastore.sock").exists()
