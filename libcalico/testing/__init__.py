"""Helpers shared by tests, benches and the lab.

- ``libcalico.testing.ports``: ``free_port()`` / ``free_ports(n)`` on loopback.
- ``libcalico.etcd_server.EtcdServer``: a real etcd process on free ports with a data dir.
- ``libcalico.testing.datastore``: the datastore service in this process on a unix socket
  (``running_datastore(...)``), for tests that want real gRPC without a subprocess.

Nothing here imports pytest; fixtures live in ``tests/conftest.py``.
"""

from libcalico.testing.ports import free_port, free_ports

__all__ = ["free_port", "free_ports"]
