"""Helpers for the CNI and lab tests and ``bench/cni.py``: a control plane, a node, plugin runs.

- ``ControlPlane``: etcd and the control-plane services as the lab runs them
  (``control_plane.up`` on a private state dir under /tmp, so socket paths stay short),
  always brought down by ``close()``; ``ds(...)`` runs one datastore coroutine.
- ``plugin_env`` / ``run_plugin``: one CNI plugin run the way a runtime does it (env + stdin),
  returning exit status and parsed output.
- ``lab_conflist``: a CNI config list pointing at a control plane.

Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from libcalico.cli.lab import control_plane
from libcalico.cli.lab.control_plane import Layout

T = TypeVar("T")
BIN = str(Path(sys.executable).parent)
CNI_PATH = f"{BIN}:/usr/lib/cni"


class ControlPlane:
    """The lab's control plane on a private state dir. Always call ``close()``."""

    def __init__(self, prefix: str = "cni-cp-") -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.layout = Layout(self.root)
        self.lines: list[str] = []
        try:
            control_plane.up(self.layout, self.lines.append)
        except BaseException:
            self.close()
            raise

    @property
    def datastore(self) -> str:
        return self.layout.target("datastore")

    @property
    def ipam(self) -> str:
        return self.layout.target("ipam")

    def ds(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(client)`` with a ``DatastoreClient`` on this control plane."""
        from libcalico.client import DatastoreClient

        async def go() -> T:
            async with DatastoreClient(self.datastore, timeout=20) as client:
                return await fn(client)

        return asyncio.run(go())

    def close(self) -> None:
        try:
            control_plane.down(self.layout, lambda _: None, purge=True)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def ippool(name: str, cidr: str, block_size: int = 26, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name},
            "spec": {"cidr": cidr, "blockSize": block_size, "nodeSelector": "all()", **spec}}


def calico_conf(
    cp: ControlPlane, *, node: str = "node-1", version: str = "1.0.0",
    ipam: Mapping[str, Any] | None = None, **extra: Any,
) -> dict[str, Any]:
    """The ``calico`` plugin's object for a config list on ``cp``."""
    conf: dict[str, Any] = {
        "type": "calico",
        "nodename": node,
        "mtu": 1450,
        "log_level": "debug",
        "log_file_path": str(cp.root / "logs" / "cni.log"),
        "datastore_type": "etcdv3",
        "datastore_endpoint": cp.datastore,
        "ipam": dict(ipam or {"type": "calico-ipam", "ipam_endpoint": cp.ipam}),
    }
    conf.update(extra)
    return conf


def lab_conflist(
    cp: ControlPlane, *plugins: Mapping[str, Any], version: str = "1.0.0",
    name: str = "k8s-pod-network", **calico: Any,
) -> dict[str, Any]:
    return {"name": name, "cniVersion": version,
            "plugins": [calico_conf(cp, **calico), *plugins]}


@dataclass
class PluginRun:
    rc: int
    out: dict[str, Any]
    stderr: str
    stdout: str = ""
    argv: list[str] = field(default_factory=list)


def plugin_env(
    command: str, *, container_id: str = "", netns: str = "", ifname: str = "eth0",
    args: str = "", path: str = CNI_PATH, extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "CALICO_"))}
    env.update({"CNI_COMMAND": command, "CNI_PATH": path})
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    if ifname:
        env["CNI_IFNAME"] = ifname
    if args:
        env["CNI_ARGS"] = args
    env.update(extra or {})
    return env


def run_plugin(
    plugin: str, config: Mapping[str, Any] | bytes, env: Mapping[str, str],
    netns_exec: str | None = None, timeout: float = 60,
) -> PluginRun:
    """Exec ``plugin`` (a path or a name in the venv's bin) like a runtime."""
    binary = plugin if "/" in plugin else str(Path(BIN) / plugin)
    argv = ["ip", "netns", "exec", netns_exec, binary] if netns_exec else [binary]
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    proc = subprocess.run(argv, input=stdin, capture_output=True, env=dict(env),
                          timeout=timeout, check=False)
    out: dict[str, Any] = {}
    if proc.stdout.strip():
        try:
            parsed = json.loads(proc.stdout)
            out = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            pass
    return PluginRun(proc.returncode, out, proc.stderr.decode(errors="replace"),
                     proc.stdout.decode(errors="replace"), argv)
