"""Kernel-test fixtures: private network namespaces that are always deleted.

Every fixture skips (never fails) without root or without the ``ip`` tool, and names its
namespaces with a per-run prefix so parallel runs and stale leftovers cannot collide.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from libcalico.netns import Topology, have_root
from services.dataplane.commands import ExecRunner, Runner
from services.dataplane.netns_loop import NetnsLoop
from services.dataplane.sessions import SessionRunner

_RUN_PREFIX = f"cpt{os.getpid() % 100000}"
_counter = 0


def _skip_reason() -> str | None:
    if not have_root():
        return "kernel tests need root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed; run scripts/setup.sh"
    return None


@pytest.fixture
def topology() -> Iterator[Topology]:
    """An empty ``Topology`` whose namespaces are removed after the test, pass or fail.

    Example::

        def test_ping(topology):
            topology.add_segment("a", "10.99.0.0/24")
            topology.add_host("h1"); topology.add_host("h2")
            topology.exec("h1", ["ping", "-c1", "10.99.0.2"])
    """
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    global _counter
    _counter += 1
    topo = Topology(prefix=f"{_RUN_PREFIX}x{_counter}")
    try:
        yield topo
    finally:
        topo.destroy()


@pytest.fixture
def netns(topology: Topology) -> str:
    """One private namespace with loopback up, for tools that need a kernel to write into."""
    topology.add_segment("s", "10.255.0.0/24")
    return topology.add_host("h").netns


@pytest.fixture
def session_runner(loop: NetnsLoop) -> Iterator[SessionRunner]:
    """The driver's production writers (long-lived nft-backend restores, one libnftables
    context), built on the namespace's thread as the driver builds them. Needs the test
    module's ``loop``, a ``NetnsLoop`` in its namespace."""
    async def make() -> SessionRunner:
        return SessionRunner(ExecRunner())

    sessions = loop.run(make())
    yield sessions
    loop.run(sessions.close())


@pytest.fixture(params=["exec", "session"])
def runner(request: pytest.FixtureRequest) -> Runner:
    """Each rule-owner test runs twice: with one exec per write, and with the driver's
    production writers."""
    if request.param == "exec":
        return ExecRunner()
    sessions: SessionRunner = request.getfixturevalue("session_runner")
    return sessions
