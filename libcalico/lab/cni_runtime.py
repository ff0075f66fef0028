"""The runtime's side of CNI, as libcni does it: run a network config list's plugins for a pod.

Used by ``calico-lab pod add/del``, the CNI tests and ``bench/cni.py``, so all three drive the
plugins exactly as a container runtime does:

- each plugin is found by its ``type`` in ``CNI_PATH`` and exec'd with ``CNI_COMMAND``,
  ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH`` in its
  environment and its own config on stdin: the plugin's object from the list plus the list's
  ``name`` and ``cniVersion``, ``prevResult`` (the previous plugin's result; for DEL and CHECK
  the cached result of ADD, from 0.4.0 on) and ``runtimeConfig`` holding those capability
  arguments (``portMappings``, ``bandwidth``...) the plugin declares in ``capabilities``;
- ADD runs the plugins in order, DEL and GC in reverse, CHECK in order (0.4.0+ only) and
  STATUS (1.1.0+); a failing plugin stops ADD and CHECK, while DEL goes on through the
  remaining plugins and reports the first failure;
- with ``netns_exec`` the plugins run inside that network namespace (``ip netns exec``), as
  they would on the node whose namespace it is.

A plugin's error is raised as ``CniExecError`` with the spec's code, msg and details.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CNI_PATH = (str(Path(sys.executable).parent), "/usr/lib/cni", "/opt/cni/bin")


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


class CniExecError(Exception):
    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{plugin} {command} failed (code {code}): {msg}"
                         + (f" -- {details}" if details else ""))
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details


@dataclass
class RuntimeConf:
    """What the runtime knows about one attachment."""

    container_id: str
    netns: str  # path, e.g. /var/run/netns/<name>
    ifname: str = "eth0"
    args: Sequence[tuple[str, str]] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)

    def cni_args(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.args)


def k8s_args(namespace: str, pod: str, container_id: str) -> list[tuple[str, str]]:
    """The ``CNI_ARGS`` a Kubernetes runtime (containerd, CRI-O) passes."""
    return [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", namespace),
        ("K8S_POD_NAME", pod),
        ("K8S_POD_INFRA_CONTAINER_ID", container_id),
    ]


def load_conflist(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``.conflist``, or a single-plugin ``.conf`` wrapped as a list of one."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    if "plugins" not in data:
        plugin = {k: v for k, v in data.items() if k not in ("name", "cniVersion")}
        data = {"name": data.get("name", ""), "cniVersion": data.get("cniVersion", "0.1.0"),
                "plugins": [plugin]}
    return data


@dataclass
class Timing:
    plugin: str
    command: str
    seconds: float


class CniRuntime:
    """Runs plugins from ``path`` (inside ``netns_exec`` when given)."""

    def __init__(
        self,
        path: Sequence[str] = DEFAULT_CNI_PATH,
        *,
        netns_exec: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.path = [p for p in path if p]
        self.netns_exec = netns_exec
        base = dict(os.environ if env is None else env)
        self.env = {k: v for k, v in base.items() if not k.startswith("CNI_")}
        self.timeout = timeout
        self.timings: list[Timing] = []

    def find(self, plugin_type: str) -> str:
        for d in self.path:
            candidate = os.path.join(d, plugin_type)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise CniExecError(plugin_type, "find", 7,
                           f"failed to find plugin {plugin_type!r} in path {self.path}")

    def exec_plugin(
        self, plugin_type: str, command: str, rt: RuntimeConf | None, config: Mapping[str, Any]
    ) -> dict[str, Any]:
        binary = self.find(plugin_type)
        env = dict(self.env)
        env["CNI_COMMAND"] = command
        env["CNI_PATH"] = os.pathsep.join(self.path)
        if rt is not None:
            env["CNI_CONTAINERID"] = rt.container_id
            env["CNI_NETNS"] = rt.netns
            env["CNI_IFNAME"] = rt.ifname
            env["CNI_ARGS"] = rt.cni_args()
        argv = [binary]
        if self.netns_exec:
            argv = ["ip", "netns", "exec", self.netns_exec, binary]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                argv, input=json.dumps(config).encode(), capture_output=True, env=env,
                timeout=self.timeout, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CniExecError(plugin_type, command, 999,
                               f"no answer within {self.timeout:g}s") from exc
        self.timings.append(Timing(plugin_type, command, time.perf_counter() - t0))
        data: dict[str, Any] = {}
        if proc.stdout.strip():
            try:
                parsed = json.loads(proc.stdout)
                if isinstance(parsed, dict):
                    data = parsed
            except ValueError:
                pass
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace").strip()
            if "code" in data:
                raise CniExecError(plugin_type, command, int(data.get("code") or 999),
                                   str(data.get("msg") or ""), str(data.get("details") or ""))
            raise CniExecError(plugin_type, command, 999,
                               f"exit status {proc.returncode}",
                               (stderr or proc.stdout.decode(errors="replace"))[-500:])
        return data

    @staticmethod
    def plugin_config(
        conflist: Mapping[str, Any], plugin: Mapping[str, Any], prev: Mapping[str, Any] | None,
        rt: RuntimeConf | None,
    ) -> dict[str, Any]:
        conf = dict(plugin)
        conf["name"] = conflist.get("name", "")
        conf["cniVersion"] = conflist.get("cniVersion", "0.1.0")
        if prev is not None:
            conf["prevResult"] = prev
        caps = plugin.get("capabilities") or {}
        if rt is not None:
            runtime_config = {k: v for k, v in rt.capability_args.items() if caps.get(k)}
            if runtime_config:
                conf["runtimeConfig"] = runtime_config
        return conf

    def add(self, conflist: Mapping[str, Any], rt: RuntimeConf) -> dict[str, Any]:
        """ADD through every plugin; returns the last result (cache it for DEL and CHECK)."""
        prev: dict[str, Any] | None = None
        for plugin in conflist["plugins"]:
            conf = self.plugin_config(conflist, plugin, prev, rt)
            prev = self.exec_plugin(str(plugin["type"]), "ADD", rt, conf)
        return prev or {}

    def check(
        self, conflist: Mapping[str, Any], rt: RuntimeConf, cached: Mapping[str, Any]
    ) -> None:
        version = str(conflist.get("cniVersion", "0.1.0"))
        if version_tuple(version) < (0, 4, 0):
            raise CniExecError("runtime", "CHECK", 1,
                               f"configuration version {version} does not support CHECK")
        for plugin in conflist["plugins"]:
            conf = self.plugin_config(conflist, plugin, cached, rt)
            self.exec_plugin(str(plugin["type"]), "CHECK", rt, conf)

    def delete(
        self, conflist: Mapping[str, Any], rt: RuntimeConf,
        cached: Mapping[str, Any] | None = None,
    ) -> None:
        version = str(conflist.get("cniVersion", "0.1.0"))
        prev = cached if cached and version_tuple(version) >= (0, 4, 0) else None
        first: CniExecError | None = None
        for plugin in reversed(conflist["plugins"]):
            conf = self.plugin_config(conflist, plugin, prev, rt)
            try:
                self.exec_plugin(str(plugin["type"]), "DEL", rt, conf)
            except CniExecError as exc:
                first = first or exc
        if first is not None:
            raise first

    def status(self, conflist: Mapping[str, Any]) -> None:
        for plugin in conflist["plugins"]:
            conf = self.plugin_config(conflist, plugin, None, None)
            self.exec_plugin(str(plugin["type"]), "STATUS", None, conf)
