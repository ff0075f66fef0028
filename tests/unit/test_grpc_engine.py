"""gRPC core's I/O engine is chosen before ``grpc`` loads, in every entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from libcalico import grpc_engine

ROOT = Path(__file__).resolve().parents[2]


def fresh_python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a new interpreter that inherits no ``GRPC_EXPERIMENTS`` (this one's
    was set by libcalico)."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip


def entry_modules() -> list[str]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return sorted({target.split(":", 1)[0] for target in scripts.values()})


def test_sets_the_poller_when_nothing_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    monkeypatch.delitem(sys.modules, "grpc")
    assert grpc_engine.prefer_poller() is True
    assert os.environ["GRPC_EXPERIMENTS"] == grpc_engine.POLLER_EXPERIMENTS


def test_leaves_the_operators_setting_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_EXPERIMENTS", "event_engine_client")
    monkeypatch.delitem(sys.modules, "grpc")
    assert grpc_engine.prefer_poller() is False
    assert os.environ["GRPC_EXPERIMENTS"] == "event_engine_client"


def test_does_not_pretend_once_grpc_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc  # noqa: F401  (loaded already in this process; made explicit)

    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    assert grpc_engine.prefer_poller() is False
    assert "GRPC_EXPERIMENTS" not in os.environ


@pytest.mark.parametrize("module", entry_modules())
def test_every_console_script_chooses_before_grpc_loads(module: str) -> None:
    # prefer_poller declines once grpc is loaded, so the setting is there after the import
    # only if libcalico chose before the entry module's own imports reached grpc.
    code = f"import os; import {module}; print(os.environ.get('GRPC_EXPERIMENTS', ''))"
    assert fresh_python(code).stdout.strip() == grpc_engine.POLLER_EXPERIMENTS


def test_grpc_knows_the_experiments_we_name() -> None:
    # gRPC ignores an experiment it does not know and says so on stderr: a grpcio upgrade that
    # drops these names would silently give the EventEngine back (and print that line in every
    # process). This fails first.
    stderr = fresh_python("import libcalico, grpc").stderr  # grpc reads the flags on import
    assert "experiment" not in stderr.lower(), stderr
