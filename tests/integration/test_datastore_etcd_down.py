"""The service when etcd is down: bounded waits, UNAVAILABLE naming the endpoints, and calls in
flight that survive a quick etcd restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from libcalico.client import DatastoreClient
from libcalico.errors import UnavailableError
from libcalico.etcd_server import EtcdServer


@pytest.fixture
def etcd(etcd_per_test: EtcdServer) -> EtcdServer:
    """This module kills etcd: each test gets its own."""
    return etcd_per_test


def ippool(name: str, cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr},
    }


@pytest.mark.parametrize("datastore_options", [{"etcd_unavailable_wait": 1.0}])
async def test_etcd_down_is_unavailable_naming_the_endpoints(
    etcd: EtcdServer, datastore_client: DatastoreClient
) -> None:
    etcd.kill()
    start = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        await datastore_client.get("IPPool", "a")
    waited = time.monotonic() - start
    assert etcd.endpoint in str(info.value)
    assert 0.9 < waited < 4  # the service's bounded wait for etcd (1 s here)
    with pytest.raises(UnavailableError, match=etcd.endpoint):
        await datastore_client.create(ippool("a", "10.65.0.0/16"))


async def test_calls_in_flight_survive_an_etcd_restart(
    etcd: EtcdServer, datastore_client: DatastoreClient
) -> None:
    await datastore_client.create(ippool("a", "10.65.0.0/16"))
    etcd.kill()
    pending = [
        asyncio.ensure_future(datastore_client.get("IPPool", "a")),
        asyncio.ensure_future(datastore_client.create(ippool("b", "10.66.0.0/16"))),
    ]
    await etcd.start_async()  # yields to the loop: both calls reach the service meanwhile
    got, created = await asyncio.gather(*pending)
    assert got["metadata"]["name"] == "a"
    assert created["metadata"]["name"] == "b"
