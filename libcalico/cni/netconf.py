"""The ``calico`` plugin's network config: Calico's fields, what each means here, what cannot be.

The plugin is a fresh process per pod, so this module imports only the standard library.

Fields read (Calico's names; ``cni-plugin/pkg/types`` in Calico)::

    name                     network name; IPAM handles are <name>.<containerID> [k8s-pod-network]
    nodename                 this node's name; else kubernetes.node_name; else the nodename file;
    nodename_file            [/var/lib/calico/nodename]          else the hostname
    nodename_file_optional   a missing nodename file is not an error (we never wait for it)
    mtu                      veth MTU; 0 or absent: read mtu_file, 1500 when that is absent
    mtu_file                 (calico-py) [/var/lib/calico/mtu]
    require_mtu_file         fail when the MTU file is absent instead of falling back
    log_level                debug|info|warning|error|none [info]
    log_file_path            [/var/log/calico/cni/cni.log]; env CALICO_CNI_LOG_FILE overrides
    datastore_type           etcdv3 (or empty): the calico-py datastore service
    datastore_endpoint       (calico-py) gRPC target of the datastore service; env
                             CALICO_DATASTORE; [unix:///run/calico-lab/sock/datastore.sock]
    ipam                     the IPAM plugin's section (type calico-ipam or host-local ...)
    policy                   policy.type k8s is not honoured (no Kubernetes API), see below
    container_settings       allow_ip_forwarding
    include_default_routes   with IPAM-supplied routes, also add the default route
    pod_metadata_dir         (calico-py) where pod labels/annotations/ports are read from:
                             <dir>/<namespace>/<pod>.json (the lab writes these)
    device_type              veth only
    policy_setup_timeout_seconds  ADD waits (at most this long) until this node's dataplane
                             has programmed the endpoint; 0 or absent: no wait (Calico's
                             default). A wait that times out is a warning, not a failure.
    endpoint_status_dir      where the dataplane writes endpoint status files
                             [/var/run/calico/endpoint-status]

Fields that name a Kubernetes cluster (``datastore_type: kubernetes``, ``kubernetes.kubeconfig``,
``kubernetes.k8s_api_root``, ``policy.type: k8s``) and Calico features this plugin does not
implement are *accepted* and reported once per call (stderr and the log) with what is done
instead; ``unsupported(conf)`` lists them. ``ipam.subnet``/``ranges`` ``usePodCidr`` is honoured
from the Node resource's ``status.podCIDRs`` in the calico-py datastore (no API server).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_NETWORK = "k8s-pod-network"
DEFAULT_NODENAME_FILE = "/var/lib/calico/nodename"
DEFAULT_MTU_FILE = "/var/lib/calico/mtu"
DEFAULT_ENDPOINT_STATUS_DIR = "/var/run/calico/endpoint-status"
DEFAULT_MTU = 1500
DEFAULT_LOG_FILE = "/var/log/calico/cni/cni.log"
DEFAULT_DATASTORE = "unix:///run/calico-lab/sock/datastore.sock"
DATASTORE_ENV = "CALICO_DATASTORE"
LOG_FILE_ENV = "CALICO_CNI_LOG_FILE"
POD_CIDR_MARKER = "usePodCidr"
POD_CIDR_MARKER_V6 = "usePodCidrIPv6"


class ConfigError(ValueError):
    """A field has a value the plugin cannot work with (CNI error code 7)."""


@dataclass(frozen=True)
class NetConf:
    """The fields the plugin acts on, resolved (defaults applied, env consulted)."""

    name: str
    cni_version: str
    nodename: str
    mtu: int
    datastore: str
    ipam: dict[str, Any]
    log_level: str
    log_file: str
    include_default_routes: bool
    allow_ip_forwarding: bool
    pod_metadata_dir: str
    raw: dict[str, Any] = field(repr=False)
    notes: tuple[str, ...] = ()
    policy_setup_timeout: float = 0.0
    endpoint_status_dir: str = DEFAULT_ENDPOINT_STATUS_DIR

    @property
    def ipam_type(self) -> str:
        return str(self.ipam.get("type") or "")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes")


def nodename(conf: Mapping[str, Any]) -> str:
    """``nodename``, then ``kubernetes.node_name``, then the nodename file, then hostname."""
    if conf.get("nodename"):
        return str(conf["nodename"])
    k8s = conf.get("kubernetes")
    if isinstance(k8s, dict) and k8s.get("node_name"):
        return str(k8s["node_name"])
    path = str(conf.get("nodename_file") or DEFAULT_NODENAME_FILE)
    try:
        with open(path) as f:
            name = f.read().strip()
        if name:
            return name
    except OSError:
        pass
    return os.uname().nodename.lower()


def resolve_mtu(conf: Mapping[str, Any]) -> int:
    """``mtu`` when positive; else the MTU file (``mtu_file``); else 1500.

    Calico's node agent writes the pod MTU (host MTU minus encapsulation overhead) to the file;
    ``require_mtu_file`` makes its absence an error rather than a silent 1500.
    """
    raw = conf.get("mtu")
    try:
        mtu = int(raw or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"mtu must be a number, got {raw!r}") from None
    if mtu < 0:
        raise ConfigError(f"mtu must not be negative, got {mtu}")
    if mtu:
        return mtu
    path = str(conf.get("mtu_file") or DEFAULT_MTU_FILE)
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        if _bool(conf.get("require_mtu_file", False)):
            raise ConfigError(
                f"mtu is 0 and require_mtu_file is set, but the MTU file {path} cannot be read"
            ) from None
        return DEFAULT_MTU
    try:
        mtu = int(text)
    except ValueError:
        raise ConfigError(f"the MTU file {path} holds {text!r}, not a number") from None
    if not 68 <= mtu <= 65535:
        raise ConfigError(f"the MTU file {path} holds {mtu}, outside 68-65535")
    return mtu


def datastore_target(conf: Mapping[str, Any], env: Mapping[str, str]) -> str:
    return str(conf.get("datastore_endpoint") or env.get(DATASTORE_ENV) or DEFAULT_DATASTORE)


def unsupported(conf: Mapping[str, Any], datastore: str) -> list[str]:
    """One sentence per field that cannot be honoured, saying what happens instead."""
    notes: list[str] = []
    dtype = str(conf.get("datastore_type") or "")
    if dtype == "kubernetes":
        notes.append(
            "datastore_type 'kubernetes' cannot be honoured (calico-py has no Kubernetes API "
            f"server): endpoints are written to the calico-py datastore at {datastore}"
        )
    elif dtype not in ("", "etcdv3"):
        notes.append(f"datastore_type {dtype!r} is unknown: using the calico-py datastore at "
                     f"{datastore}")
    if conf.get("etcd_endpoints") or conf.get("etcd_authority"):
        notes.append(
            "etcd_endpoints is not used: the plugin reaches etcd through the calico-py "
            f"datastore service at {datastore}"
        )
    k8s = conf.get("kubernetes")
    if isinstance(k8s, dict):
        for key in ("kubeconfig", "k8s_api_root", "k8s_auth_token"):
            if k8s.get(key):
                notes.append(
                    f"kubernetes.{key} cannot be honoured (no Kubernetes API server): pod "
                    "labels, annotations and ports come from pod_metadata_dir instead"
                )
    policy = conf.get("policy")
    if isinstance(policy, dict) and str(policy.get("type") or "") == "k8s":
        notes.append(
            "policy.type 'k8s' cannot be honoured (no Kubernetes API to read pods and "
            "namespaces from): labels come from pod_metadata_dir, the namespace profile "
            "kns.<namespace> is referenced as Calico does"
        )
    fc = conf.get("feature_control")
    if isinstance(fc, dict):
        for key, value in fc.items():
            if _bool(value):
                notes.append(f"feature_control.{key} is not implemented: ignored")
    if str(conf.get("device_type") or "veth") != "veth":
        notes.append(f"device_type {conf.get('device_type')!r} is not implemented: using veth")
    for key in ("readiness_gates", "endpoint_status_dir", "policy_setup_timeout_seconds"):
        if conf.get(key):
            notes.append(f"{key} is not implemented: ADD does not wait for policy programming")
    if conf.get("num_queues") and int(conf.get("num_queues") or 1) != 1:
        notes.append("num_queues is not implemented: the veth has one queue pair")
    ipam = conf.get("ipam")
    if isinstance(ipam, dict) and uses_pod_cidr(ipam):
        notes.append(
            "ipam usePodCidr: the Kubernetes Node's spec.podCIDR is read from the calico-py "
            "Node resource's status.podCIDRs instead"
        )
    return notes


def uses_pod_cidr(ipam: Mapping[str, Any]) -> bool:
    if ipam.get("subnet") in (POD_CIDR_MARKER, POD_CIDR_MARKER_V6):
        return True
    for rng in ipam.get("ranges") or []:
        for entry in rng if isinstance(rng, list) else []:
            if isinstance(entry, dict) and entry.get("subnet") in (
                POD_CIDR_MARKER, POD_CIDR_MARKER_V6,
            ):
                return True
    return False


def load(conf: dict[str, Any], env: Mapping[str, str] | None = None) -> NetConf:
    """Resolve the config; raises ConfigError for values that cannot work."""
    env = os.environ if env is None else env
    ipam = conf.get("ipam") or {}
    if not isinstance(ipam, dict):
        raise ConfigError("the ipam section must be an object")
    if not ipam.get("type"):
        raise ConfigError('the ipam section needs a "type" (calico-ipam, host-local, ...)')
    settings = conf.get("container_settings") or {}
    if not isinstance(settings, dict):
        raise ConfigError("container_settings must be an object")
    datastore = datastore_target(conf, env)
    try:
        policy_timeout = float(conf.get("policy_setup_timeout_seconds") or 0)
    except (TypeError, ValueError):
        raise ConfigError("policy_setup_timeout_seconds must be a number, got "
                          f"{conf.get('policy_setup_timeout_seconds')!r}") from None
    if policy_timeout < 0:
        raise ConfigError("policy_setup_timeout_seconds must not be negative")
    return NetConf(
        name=str(conf.get("name") or DEFAULT_NETWORK),
        cni_version=str(conf.get("cniVersion") or "0.1.0"),
        nodename=nodename(conf),
        mtu=resolve_mtu(conf),
        datastore=datastore,
        ipam=dict(ipam),
        log_level=str(conf.get("log_level") or "info").lower(),
        log_file=str(env.get(LOG_FILE_ENV) or conf.get("log_file_path") or DEFAULT_LOG_FILE),
        include_default_routes=_bool(conf.get("include_default_routes", False)),
        allow_ip_forwarding=_bool(settings.get("allow_ip_forwarding", False)),
        pod_metadata_dir=str(conf.get("pod_metadata_dir") or ""),
        raw=conf,
        notes=tuple(unsupported(conf, datastore)),
        policy_setup_timeout=policy_timeout,
        endpoint_status_dir=str(conf.get("endpoint_status_dir") or DEFAULT_ENDPOINT_STATUS_DIR),
    )


def substitute_pod_cidr(ipam: Mapping[str, Any], v4: list[str], v6: list[str]) -> dict[str, Any]:
    """The ipam section with ``usePodCidr`` / ``usePodCidrIPv6`` replaced by the node's CIDRs.

    Raises ConfigError naming the marker when the node has no CIDR of that family (host-local
    would otherwise fail with a parse error about the marker itself).
    """

    def pick(marker: str) -> str:
        cidrs = v4 if marker == POD_CIDR_MARKER else v6
        if not cidrs:
            family = "IPv4" if marker == POD_CIDR_MARKER else "IPv6"
            raise ConfigError(
                f"ipam uses {marker} but the node has no {family} pod CIDR (status.podCIDRs of "
                "its Node resource): give the node a pod CIDR, or set ipam.subnet/ranges to a "
                "CIDR"
            )
        return cidrs[0]

    out = dict(ipam)
    if out.get("subnet") in (POD_CIDR_MARKER, POD_CIDR_MARKER_V6):
        out["subnet"] = pick(str(out["subnet"]))
    if isinstance(out.get("ranges"), list):
        ranges = []
        for rng in out["ranges"]:
            new = []
            for entry in rng if isinstance(rng, list) else []:
                entry = dict(entry) if isinstance(entry, dict) else entry
                if isinstance(entry, dict) and entry.get("subnet") in (
                    POD_CIDR_MARKER, POD_CIDR_MARKER_V6,
                ):
                    entry["subnet"] = pick(str(entry["subnet"]))
                new.append(entry)
            ranges.append(new)
        out["ranges"] = ranges
    return out


def dummy_pod_cidr(ipam: Mapping[str, Any]) -> dict[str, Any]:
    """For DEL: host-local frees by container ID, so any CIDR will do (Calico uses 0.0.0.0/0)."""
    return substitute_pod_cidr(ipam, ["0.0.0.0/0"], ["::/0"])
