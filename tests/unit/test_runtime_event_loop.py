"""Which event loop ``run_main`` gives a service: uvloop when installed, asyncio when told."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest

from libcalico.runtime import server


def test_uvloop_is_the_default_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.delenv(server.EVENT_LOOP_ENV, raising=False)
    assert server.event_loop_factory() is uvloop.new_event_loop


def test_env_forces_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(server.EVENT_LOOP_ENV, "asyncio")
    assert server.event_loop_factory() is None


def test_node_agents_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # The dataplane driver's pyroute2 netlink sockets are AF_NETLINK datagram endpoints,
    # which uvloop refuses; it runs on asyncio's loop whatever is installed.
    monkeypatch.delenv(server.EVENT_LOOP_ENV, raising=False)
    assert server.event_loop_factory(allow_uvloop=False) is None


def test_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(server.EVENT_LOOP_ENV, raising=False)
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert server.event_loop_factory() is None


def test_run_main_runs_on_the_chosen_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def amain() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    monkeypatch.setenv(server.EVENT_LOOP_ENV, "asyncio")
    with pytest.raises(SystemExit) as exit_info:
        server.run_main(amain)
    assert exit_info.value.code == 0
    assert seen and seen[0].startswith("asyncio")
