"""The CNI contract as a plugin sees it: environment, stdin config, results, errors, dispatch.

Shared by ``calico-ipam`` and ``calico``. A plugin is a fresh process per call, so this module
imports nothing but the standard library.

- ``load_args()`` reads ``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``,
  ``CNI_ARGS`` (``K=V;K2=V2``) and ``CNI_PATH`` and the network config JSON on stdin, and checks
  what each command requires (code 4 when a variable is missing, 6 when stdin is not JSON).
- ``Result`` is the current (1.0.0) result model; ``result_to_json(result, version)`` renders
  it for the config's ``cniVersion``: 1.0.0 (``ips`` without ``version``), 0.3.0/0.3.1/0.4.0
  (``ips`` with ``"version": "4"|"6"`` and ``interface`` indexes), 0.1.0/0.2.0 (one ``ip4`` /
  ``ip6`` object each with its own ``routes``). ``result_from_json`` reads any of those back
  (``prevResult``).
- ``CniError(code, msg, details)`` renders as the spec's error object
  ``{"cniVersion", "code", "msg", "details"}``, printed on stdout with exit status 1.
- ``run(add=..., delete=..., check=...)`` is the dispatcher (what libcni's ``skel`` does):
  VERSION answers without touching stdin config, the config's ``cniVersion`` must be
  supported (code 1 otherwise), CHECK needs 0.4.0 or later, and any exception that is not a
  ``CniError`` becomes code 999 with its message rather than a Python traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")
CURRENT_VERSION = "1.0.0"

# Error codes from the CNI spec ("Well-known Error Codes"); 100+ are the plugin's own.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_INTERNAL = 999

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str = CURRENT_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


# -- arguments ---------------------------------------------------------------------------------


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0``."""
    out: dict[str, str] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS entry {part!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


@dataclass
class CmdArgs:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    stdin: bytes = b""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion") or "0.1.0")


_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "VERSION": (),
}


def load_args(env: Mapping[str, str] | None = None, stdin: bytes | None = None) -> CmdArgs:
    env = os.environ if env is None else env
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(
            ERR_INVALID_ENV,
            f"CNI_COMMAND is {command!r}",
            "set CNI_COMMAND to ADD, DEL, CHECK or VERSION (this is a CNI plugin: a container "
            "runtime runs it with the network config on stdin)",
        )
    missing = [v for v in _REQUIRED[command] if not env.get(v)]
    if missing:
        raise CniError(ERR_INVALID_ENV, f"{', '.join(missing)} must be set for {command}")
    out = CmdArgs(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=[p for p in env.get("CNI_PATH", "").split(os.pathsep) if p],
    )
    if stdin is None:
        stdin = b"" if command == "VERSION" and sys.stdin.isatty() else sys.stdin.buffer.read()
    out.stdin = stdin
    if stdin.strip():
        try:
            config = json.loads(stdin)
        except ValueError as exc:
            raise CniError(ERR_DECODE, "the network config on stdin is not JSON", str(exc)) from exc
        if not isinstance(config, dict):
            raise CniError(ERR_DECODE, "the network config on stdin is not a JSON object")
        out.config = config
    elif command != "VERSION":
        raise CniError(ERR_DECODE, f"no network config on stdin for {command}")
    return out


# -- results -----------------------------------------------------------------------------------


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass
class IPConfig:
    address: str  # CIDR notation: 10.65.79.5/26
    gateway: str = ""
    interface: int | None = None

    @property
    def version(self) -> str:
        return "6" if ":" in self.address else "4"


@dataclass
class Route:
    dst: str
    gw: str = ""


@dataclass
class Result:
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)


def _route_json(r: Route) -> dict[str, str]:
    out = {"dst": r.dst}
    if r.gw:
        out["gw"] = r.gw
    return out


def result_to_json(result: Result, cni_version: str) -> dict[str, Any]:
    v = version_tuple(cni_version)
    out: dict[str, Any] = {"cniVersion": cni_version}
    if v < (0, 3, 0):
        for fam, key in (("4", "ip4"), ("6", "ip6")):
            ip = next((i for i in result.ips if i.version == fam), None)
            if ip is None:
                continue
            entry: dict[str, Any] = {"ip": ip.address}
            if ip.gateway:
                entry["gateway"] = ip.gateway
            routes = [r for r in result.routes if (":" in r.dst) == (fam == "6")]
            if routes:
                entry["routes"] = [_route_json(r) for r in routes]
            out[key] = entry
        out["dns"] = result.dns
        return out
    if result.interfaces:
        out["interfaces"] = [
            {k: val for k, val in (("name", i.name), ("mac", i.mac), ("sandbox", i.sandbox)) if val}
            for i in result.interfaces
        ]
    if result.ips:
        ips = []
        for ip in result.ips:
            e: dict[str, Any] = {}
            if v < (1, 0, 0):
                e["version"] = ip.version
            e["address"] = ip.address
            if ip.gateway:
                e["gateway"] = ip.gateway
            if ip.interface is not None:
                e["interface"] = ip.interface
            ips.append(e)
        out["ips"] = ips
    if result.routes:
        out["routes"] = [_route_json(r) for r in result.routes]
    out["dns"] = result.dns
    return out


def result_from_json(obj: Mapping[str, Any]) -> Result:
    """A result (or ``prevResult``) of any supported version."""
    res = Result(dns=dict(obj.get("dns") or {}))
    if "ip4" in obj or "ip6" in obj:
        for key in ("ip4", "ip6"):
            entry = obj.get(key)
            if not entry:
                continue
            res.ips.append(IPConfig(str(entry.get("ip", "")), str(entry.get("gateway") or "")))
            for r in entry.get("routes") or []:
                res.routes.append(Route(str(r.get("dst", "")), str(r.get("gw") or "")))
        return res
    for i in obj.get("interfaces") or []:
        res.interfaces.append(
            Interface(str(i.get("name", "")), str(i.get("mac", "")), str(i.get("sandbox", "")))
        )
    for ip in obj.get("ips") or []:
        iface = ip.get("interface")
        res.ips.append(
            IPConfig(
                str(ip.get("address", "")),
                str(ip.get("gateway") or ""),
                int(iface) if iface is not None else None,
            )
        )
    for r in obj.get("routes") or []:
        res.routes.append(Route(str(r.get("dst", "")), str(r.get("gw") or "")))
    return res


def version_json(supported: Sequence[str] = SUPPORTED_VERSIONS) -> dict[str, Any]:
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(supported)}


# -- dispatch ----------------------------------------------------------------------------------

Handler = Callable[[CmdArgs], Result | None]


def _emit(obj: Mapping[str, Any], out: TextIO) -> None:
    out.write(json.dumps(obj, indent=4))
    out.write("\n")
    out.flush()


def run(
    *,
    add: Handler,
    delete: Handler,
    check: Handler | None = None,
    supported: Sequence[str] = SUPPORTED_VERSIONS,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    out: TextIO | None = None,
) -> int:
    """Run one CNI command; prints the result or error JSON; returns the exit status."""
    out = out or sys.stdout
    cni_version = CURRENT_VERSION
    try:
        args = load_args(env, stdin)
        if args.command == "VERSION":
            _emit(version_json(supported), out)
            return 0
        cni_version = args.cni_version
        if cni_version not in supported:
            raise CniError(
                ERR_INCOMPATIBLE_VERSION,
                f"cniVersion {cni_version} is not supported",
                f"this plugin supports {', '.join(supported)}",
            )
        if args.command == "ADD":
            result = add(args)
            if result is not None:
                _emit(result_to_json(result, cni_version), out)
        elif args.command == "DEL":
            delete(args)
        else:
            if check is None or version_tuple(cni_version) < (0, 4, 0):
                raise CniError(
                    ERR_INCOMPATIBLE_VERSION,
                    f"cniVersion {cni_version} does not support the CHECK command",
                    "CHECK needs cniVersion 0.4.0 or later",
                )
            check(args)
        return 0
    except CniError as err:
        _emit(err.to_json(cni_version), out)
        return 1
    except Exception as exc:  # a bug or an unexpected environment: still answer in CNI terms
        wrapped = CniError(ERR_INTERNAL, str(exc) or type(exc).__name__, type(exc).__name__)
        _emit(wrapped.to_json(cni_version), out)
        return 1
