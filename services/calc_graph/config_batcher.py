"""Config batcher: FelixConfiguration ``default`` + ``node.<name>`` + ClusterInformation -> one
``ConfigUpdate`` per node.

Field names become Felix's parameter names the way the syncer's config processor does it: the
Go struct field name, i.e. the JSON name with its first letter upper-cased, except where Felix
names the parameter differently (``ipipEnabled`` -> ``IpInIpEnabled``). Values are stringified:
booleans ``true``/``false``, lists comma-joined, maps ``k=v,``, durations (``90s``, ``1m30s``)
as seconds, anything else as JSON. Per-node values override global ones; annotations
``config.projectcalico.org/<Name>`` override both fields of their resource, as in Calico.
``source_to_raw_config`` keeps the two sources apart for the driver's logs.
"""

from __future__ import annotations

import json
import re
from typing import Any

from libcalico.api.felix import felixbackend_pb2 as fb

_RENAMES = {
    "ipipEnabled": "IpInIpEnabled",
    "ipipMTU": "IpInIpMtu",
    "ipipTunnelAddress": "IpInIpTunnelAddr",
}
_CLUSTER_INFO = {
    "clusterGUID": "ClusterGUID",
    "clusterType": "ClusterType",
    "calicoVersion": "CalicoVersion",
    "datastoreReady": "DatastoreReady",
    "variant": "Variant",
}
_DURATION = re.compile(
    r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$"
)
_ANNOTATION_PREFIX = "config.projectcalico.org/"
SOURCE_GLOBAL = 1
SOURCE_HOST = 2


def _name(field: str) -> str:
    return _RENAMES.get(field) or field[:1].upper() + field[1:]


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


def _value(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m and any(m.groups()) and not value.isdigit():
            h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
            return _format_seconds(h * 3600 + mi * 60 + s + ms / 1000)
        return value
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return "".join(f"{k}={v}," for k, v in value.items())
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def felix_params(
    value: dict[str, Any] | None, names: dict[str, str] | None = None
) -> dict[str, str]:
    """One configuration resource as Felix parameters."""
    if value is None:
        return {}
    out: dict[str, str] = {}
    for field, v in (value.get("spec") or {}).items():
        name = names.get(field, _name(field)) if names is not None else _name(field)
        s = _value(v)
        if s is not None:
            out[name] = s
    for k, v in ((value.get("metadata") or {}).get("annotations") or {}).items():
        if k.startswith(_ANNOTATION_PREFIX):
            out[k[len(_ANNOTATION_PREFIX) :]] = str(v)
    return out


class ConfigBatcher:
    def __init__(self) -> None:
        self._global: dict[str, str] = {}
        self._cluster: dict[str, str] = {}
        self._hosts: dict[str, dict[str, str]] = {}
        self.global_dirty = False
        self.dirty_nodes: set[str] = set()

    def on_felix_configuration(self, name: str, value: dict[str, Any] | None) -> None:
        params = felix_params(value)
        if name == "default":
            if params != self._global:
                self._global = params
                self.global_dirty = True
        elif name.startswith("node."):
            node = name[len("node.") :]
            if params != self._hosts.get(node, {}):
                if params:
                    self._hosts[node] = params
                else:
                    self._hosts.pop(node, None)
                self.dirty_nodes.add(node)

    def on_cluster_information(self, name: str, value: dict[str, Any] | None) -> None:
        if name != "default":
            return
        params = felix_params(value, _CLUSTER_INFO)
        if params != self._cluster:
            self._cluster = params
            self.global_dirty = True

    def is_dirty(self, node: str) -> bool:
        return self.global_dirty or node in self.dirty_nodes

    def message(self, node: str) -> fb.ToDataplane:
        global_cfg = {**self._cluster, **self._global}
        host_cfg = self._hosts.get(node, {})
        update = fb.ConfigUpdate(config={**global_cfg, **host_cfg})
        update.source_to_raw_config[SOURCE_GLOBAL].source = "DatastoreGlobal"
        update.source_to_raw_config[SOURCE_GLOBAL].config.update(global_cfg)
        update.source_to_raw_config[SOURCE_HOST].source = "DatastorePerHost"
        update.source_to_raw_config[SOURCE_HOST].config.update(host_cfg)
        return fb.ToDataplane(config_update=update)

    def end_flush(self) -> None:
        self.global_dirty = False
        self.dirty_nodes = set()
