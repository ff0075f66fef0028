"""``calico-ipam``: Calico's IPAM CNI plugin, as a thin client of the IPAM service.

A container runtime (or the ``calico`` plugin) runs it with ``CNI_*`` in the environment and the
network config on stdin::

    {"name": "k8s-pod-network", "cniVersion": "1.0.0", "type": "calico",
     "nodename": "node-1",                                 # else nodename_file, else hostname
     "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "false",
              "ipv4_pools": ["default-ipv4-ippool"],       # pool names or CIDRs
              "ipv6_pools": ["2001:db8::/120"],
              "ipam_endpoint": "unix:///run/calico-lab/sock/ipam.sock"}}

- ADD: AutoAssign one IPv4 (unless ``assign_ipv4`` is "false") and/or one IPv6 (when
  ``assign_ipv6`` is "true") under handle ``<network name>.<CNI_CONTAINERID>``, with attributes
  node, timestamp and, from ``CNI_ARGS``, the pod and namespace. ``CNI_ARGS`` ``IP=<addr>``
  asks for that address instead (AssignIP). Prints the addresses with their block's mask
  (``10.65.79.5/26``) as Calico does, in the result format of the config's ``cniVersion``.
- DEL: ReleaseByHandle of the handle, then of the workload ID (``<ns>.<pod>``, or the
  container ID), as Calico does for handles written by older versions. Releasing what is
  not there succeeds, so DEL is idempotent.
- CHECK (cniVersion 0.4.0+): every address in ``prevResult`` is still allocated to the handle.
- VERSION: the supported versions.

The IPAM service is found from ``ipam_endpoint`` in the ``ipam`` section (or the top level of
the config), then ``CALICO_IPAM_ENDPOINT``, then the lab socket. Failures are CNI error JSON
whose ``msg`` says what went wrong and ``details`` what to do: code 7 for bad config or pools,
11 when the service cannot be reached or is contended (try again), 100 when the pools have no
free address, 101 for other IPAM failures.

Start-up cost matters (one process per pod): only the standard library and ``spec`` are
imported at start; ``grpc`` and the IPAM stubs only for commands that talk to the service
(measured: see ``tests/unit/test_ipam_cni.py`` and the report of ``python -X importtime``).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from libcalico.cni import spec
from libcalico.cni.spec import CmdArgs, CniError, IPConfig, Result

DEFAULT_ENDPOINT = "unix:///run/calico-lab/sock/ipam.sock"
ENDPOINT_ENV = "CALICO_IPAM_ENDPOINT"
NODENAME_FILE = "/var/lib/calico/nodename"
DEFAULT_NETWORK = "k8s-pod-network"
TIMEOUT = 60.0

ERR_IPAM_EXHAUSTED = 100
ERR_IPAM_FAILED = 101

# The IPAM service's interceptor puts the domain error in trailing metadata under this prefix
# (libcalico.runtime.interceptors.ERROR_METADATA_PREFIX; importing that module costs ~150 ms,
# which a per-pod process cannot afford, so the few lines that read it are repeated here and a
# unit test keeps the two in step).
ERROR_METADATA_PREFIX = "calico-error-"


# -- config ------------------------------------------------------------------------------------


def ipam_section(conf: Mapping[str, Any]) -> dict[str, Any]:
    section = conf.get("ipam") or {}
    if not isinstance(section, dict):
        raise CniError(spec.ERR_INVALID_CONFIG, "the ipam section of the config is not an object")
    return section


def ipam_endpoint(conf: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return str(
        ipam_section(conf).get("ipam_endpoint")
        or conf.get("ipam_endpoint")
        or env.get(ENDPOINT_ENV)
        or DEFAULT_ENDPOINT
    )


def determine_nodename(conf: Mapping[str, Any]) -> str:
    """``nodename`` in the config, else the nodename file calico-node writes, else hostname."""
    if conf.get("nodename"):
        return str(conf["nodename"])
    path = str(conf.get("nodename_file") or NODENAME_FILE)
    try:
        with open(path) as f:
            name = f.read().strip()
        if name:
            return name
    except OSError:
        pass
    return socket.gethostname().lower()


def handle_id(conf: Mapping[str, Any], container_id: str) -> str:
    return f"{conf.get('name') or DEFAULT_NETWORK}.{container_id}"


def workload_id(args: CmdArgs) -> str:
    pod = args.args.get("K8S_POD_NAME")
    if pod:
        return f"{args.args.get('K8S_POD_NAMESPACE', 'default')}.{pod}"
    return args.container_id


def go_time_string(ns: int | None = None) -> str:
    """``time.Now().UTC().String()`` as Go prints it: ``2024-05-01 10:00:00.12345 +0000 UTC``."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
    fraction = f".{frac:09d}".rstrip("0") if frac else ""
    return f"{stamp}{fraction} +0000 UTC"


def _flag(section: Mapping[str, Any], key: str, default: bool) -> bool:
    value = section.get(key)
    if value is None:
        return default
    return str(value).strip().lower() == "true"


def _pools(section: Mapping[str, Any], key: str) -> list[str]:
    value = section.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CniError(
            spec.ERR_INVALID_CONFIG,
            f"ipam.{key} must be a list of pool names or CIDRs",
            f"got {value!r}",
        )
    return value


# -- the IPAM service --------------------------------------------------------------------------


class IPAMClient:
    """One synchronous gRPC channel to the IPAM service; errors become ``CniError``."""

    def __init__(self, target: str, timeout: float = TIMEOUT) -> None:
        import grpc

        from libcalico.api.ipam.v1 import ipam_pb2, ipam_pb2_grpc

        self.grpc = grpc
        self.pb = ipam_pb2
        self.target = target
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target)
        self.stub = ipam_pb2_grpc.IPAMStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except self.grpc.RpcError as err:
            raise self._to_cni_error(err) from None

    def _to_cni_error(self, err: Any) -> CniError:
        details = error_details(err.trailing_metadata() or ())
        code = err.code()
        if details is None:
            if code in (self.grpc.StatusCode.UNAVAILABLE, self.grpc.StatusCode.DEADLINE_EXCEEDED):
                return CniError(
                    spec.ERR_TRY_AGAIN,
                    f"cannot reach the Calico IPAM service at {self.target}: "
                    f"{err.details() or code.name}",
                    "start calico-ipam-service (calico-lab up starts it), or point ipam_endpoint "
                    f"in the CNI config or {ENDPOINT_ENV} at it",
                )
            return CniError(
                ERR_IPAM_FAILED, f"IPAM service error {code.name}: {err.details()}", ""
            )
        kind = details.get("kind", "")
        message = details.get("message", "") or str(err.details())
        if kind == "ValidationError":
            return CniError(
                spec.ERR_INVALID_CONFIG,
                message,
                "fix ipv4_pools/ipv6_pools in the CNI config, or create the pool with "
                "calicoctl apply",
            )
        if kind == "ResourceExhaustedError":
            return CniError(
                ERR_IPAM_EXHAUSTED,
                message,
                "add an IPPool (calicoctl apply), raise the per-host block limit (calicoctl "
                "ipam configure --max-blocks-per-host), or free leaked addresses (calicoctl "
                "ipam check, then calicoctl ipam release)",
            )
        if kind in ("ConflictError", "RetriesExhaustedError", "UnavailableError"):
            return CniError(spec.ERR_TRY_AGAIN, message, "the request can be retried")
        return CniError(ERR_IPAM_FAILED, message, kind)


def error_details(metadata: Any) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for key, value in metadata:
        if key.startswith(ERROR_METADATA_PREFIX):
            text = value.decode() if isinstance(value, bytes) else value
            out[key[len(ERROR_METADATA_PREFIX) :]] = unquote(text)
    return out if "kind" in out else None


# -- commands ----------------------------------------------------------------------------------


def _attrs(args: CmdArgs, node: str) -> dict[str, str]:
    attrs = {"node": node, "timestamp": go_time_string()}
    pod = args.args.get("K8S_POD_NAME")
    if pod:
        attrs["pod"] = pod
        attrs["namespace"] = args.args.get("K8S_POD_NAMESPACE", "default")
    return attrs


def cmd_add(args: CmdArgs) -> Result:
    conf = args.config
    section = ipam_section(conf)
    node = determine_nodename(conf)
    handle = handle_id(conf, args.container_id)
    attrs = _attrs(args, node)
    client = IPAMClient(ipam_endpoint(conf))
    try:
        pb = client.pb
        requested = args.args.get("IP", "").strip()
        if requested:
            assign = pb.AssignIPRequest(ip=requested, handle_id=handle, attributes=attrs, node=node)
            resp = client.call("AssignIP", assign)
            bits = 128 if ":" in resp.ip else 32
            return Result(ips=[IPConfig(f"{resp.ip}/{bits}")])
        num4 = 1 if _flag(section, "assign_ipv4", True) else 0
        num6 = 1 if _flag(section, "assign_ipv6", False) else 0
        if not num4 and not num6:
            raise CniError(
                spec.ERR_INVALID_CONFIG,
                "assign_ipv4 and assign_ipv6 are both false: there is nothing to assign",
                'set "assign_ipv4": "true" and/or "assign_ipv6": "true" in the ipam section',
            )
        req = pb.AutoAssignRequest(
            num4=num4,
            num6=num6,
            handle_id=handle,
            attributes=attrs,
            node=node,
            ipv4_pools=_pools(section, "ipv4_pools"),
            ipv6_pools=_pools(section, "ipv6_pools"),
            intended_use=pb.WORKLOAD,
        )
        resp = client.call("AutoAssign", req)
        return Result(ips=[IPConfig(ip) for ip in [*resp.ipv4, *resp.ipv6]])
    finally:
        client.close()


def cmd_del(args: CmdArgs) -> None:
    conf = args.config
    client = IPAMClient(ipam_endpoint(conf))
    try:
        pb = client.pb
        handle = handle_id(conf, args.container_id)
        client.call("ReleaseByHandle", pb.ReleaseByHandleRequest(handle_id=handle))
        wid = workload_id(args)
        if wid != handle:
            client.call("ReleaseByHandle", pb.ReleaseByHandleRequest(handle_id=wid))
    finally:
        client.close()


def cmd_check(args: CmdArgs) -> None:
    conf = args.config
    prev = conf.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(spec.ERR_INVALID_CONFIG, "CHECK needs prevResult in the network config")
    handle = handle_id(conf, args.container_id)
    wanted = {handle, workload_id(args)}
    client = IPAMClient(ipam_endpoint(conf))
    try:
        for ip in spec.result_from_json(prev).ips:
            addr = ip.address.split("/", 1)[0]
            a = client.call(
                "GetAssignmentAttributes", client.pb.GetAssignmentAttributesRequest(ip=addr)
            )
            if not a.allocated:
                raise CniError(
                    ERR_IPAM_FAILED,
                    f"{addr} of container {args.container_id} is not allocated in Calico IPAM",
                    "delete and re-add the container's network (CNI DEL, then ADD)",
                )
            if a.handle_id not in wanted:
                raise CniError(
                    ERR_IPAM_FAILED,
                    f"{addr} is allocated to {a.handle_id}, not to {handle}",
                    "the address was reused; delete and re-add the container's network",
                )
    finally:
        client.close()


def main() -> None:
    sys.exit(spec.run(add=cmd_add, delete=cmd_del, check=cmd_check))


if __name__ == "__main__":
    main()
