"""``calico-lab up / status / down`` as the user runs them, and the helpers other tests use to
drive the lab and ``calicoctl`` as separate processes against a temporary state dir that is
always brought down afterwards (``running_lab``)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.paths import SEED_MANIFESTS

BIN = Path(sys.executable).parent
SEED = SEED_MANIFESTS
RESOURCE_PREFIX = "/calico/resources/v3/projectcalico.org/"


@dataclass
class Lab:
    state_dir: Path
    env: dict[str, str]

    @property
    def datastore(self) -> str:
        return f"unix://{self.state_dir}/sock/datastore.sock"

    @property
    def state(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.state_dir / "lab.json").read_text())
        return data

    @property
    def etcd_endpoint(self) -> str:
        return str(self.state["etcd_endpoint"])

    def pids(self) -> dict[str, int]:
        out = {}
        for pid_file in (self.state_dir / "pids").glob("*.pid"):
            out[pid_file.stem] = int(pid_file.read_text().split()[0])
        return out


def lab_cmd(state_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "calico-lab"), *args, "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env=_clean_env(),
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CALICO_")}


def calicoctl(lab: Lab, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "calicoctl"), *args],
        capture_output=True, text=True, timeout=60, input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL, env=lab.env,
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@contextmanager
def running_lab(state_dir: Path) -> Iterator[Lab]:
    """``calico-lab up --nodes 0``; always ``down`` after, and check nothing is left running."""
    started: dict[str, int] = {}
    try:
        up = lab_cmd(state_dir, "up", "--nodes", "0")
        lab = Lab(state_dir, {**_clean_env(),
                              "CALICO_DATASTORE": f"unix://{state_dir}/sock/datastore.sock"})
        started = lab.pids()
        assert up.returncode == 0, f"calico-lab up failed:\n{up.stdout}\n{up.stderr}"
        yield lab
    finally:
        started.update(Lab(state_dir, {}).pids())
        down = lab_cmd(state_dir, "down")
        assert down.returncode == 0, f"calico-lab down failed:\n{down.stdout}\n{down.stderr}"
        left = {name: pid for name, pid in started.items() if alive(pid)}
        assert not left, f"still running after down: {left}"


def etcd_resources(endpoint: str) -> dict[str, tuple[int, Any]]:
    """Every key under Calico's resource prefix: key -> (mod revision, JSON value)."""
    import aetcd

    host_port = endpoint.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")

    async def _dump() -> dict[str, tuple[int, Any]]:
        async with aetcd.Client(host, int(port)) as client:
            result = await client.get_prefix(RESOURCE_PREFIX.encode())
            return {
                kv.key.decode(): (int(kv.mod_revision), json.loads(kv.value))
                for kv in result
            }

    return asyncio.run(_dump())


def datastore_built() -> bool:
    return importlib.util.find_spec("services.datastore.main") is not None


# -- the lab's own behaviour -------------------------------------------------------------------


def test_up_is_idempotent_status_reports_and_down_leaves_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "lab"
    with running_lab(state_dir) as lab:
        first = lab.pids()
        assert "etcd" in first
        if datastore_built():
            assert "datastore" in first
            assert (state_dir / "sock" / "datastore.sock").exists()
        again = lab_cmd(state_dir, "up", "--nodes", "0")
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout
        assert lab.pids() == first  # nothing duplicated, nothing restarted
        status = lab_cmd(state_dir, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        lines = status.stdout.splitlines()
        assert lines[0].split() == ["NAME", "PID", "ALIVE", "HEALTH", "ADDRESS"]
        rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
        assert set(rows) == set(first)
        for name, pid in first.items():
            assert rows[name][1:4] == [str(pid), "yes", "SERVING"]
        assert (state_dir / "logs" / "etcd.log").exists()
    # running_lab brought it down and checked every pid; the state dir is clean of runtime files
    assert not list((state_dir / "sock").glob("*.sock"))
    assert not list((state_dir / "pids").glob("*.pid"))
    assert not (state_dir / "lab.json").exists()
    status = lab_cmd(state_dir, "status")
    assert status.returncode == 1 and "not running" in status.stdout


def test_up_restarts_a_dead_process(tmp_path: Path) -> None:
    import signal

    state_dir = tmp_path / "lab"
    with running_lab(state_dir) as lab:
        victim = "datastore" if datastore_built() else "etcd"
        old = lab.pids()[victim]
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(old):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        bad = lab_cmd(state_dir, "status")
        assert bad.returncode == 1
        again = lab_cmd(state_dir, "up", "--nodes", "0")
        assert again.returncode == 0, again.stdout + again.stderr
        new = lab.pids()[victim]
        assert new != old and alive(new)
        assert lab_cmd(state_dir, "status").returncode == 0


def test_down_without_up_is_harmless(tmp_path: Path) -> None:
    result = lab_cmd(tmp_path / "never", "down")
    assert result.returncode == 0
    assert "Nothing to stop" in result.stdout
