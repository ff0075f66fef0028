"""The WorkloadEndpoint the ``calico`` plugin writes for a pod, and the names it derives.

Identifiers (Calico's ``utils.GetIdentifiers``):

- ``CNI_ARGS`` carries ``K8S_POD_NAMESPACE`` and ``K8S_POD_NAME``: orchestrator ``k8s``,
  workload id ``<namespace>.<pod>``, host veth ``cali`` + 11 hex of SHA-1 of it, endpoint name
  ``<node>-k8s-<pod>-<ifname>`` in the pod's namespace, profile ``kns.<namespace>``.
- otherwise: orchestrator ``cni``, workload = the container ID, namespace ``default``, host
  veth ``cali`` + the first 11 characters of the container ID, endpoint name
  ``<node>-cni-<containerID>-<ifname>``, profile = the network name.

Each identifier in the name has its dashes doubled (``node-1`` -> ``node--1``).
``libcalico.model.names.wep_name`` is the reference; importing ``libcalico.model`` costs a
per-pod process ~75 ms, so the few lines are repeated here and a unit test keeps them equal.

Pod metadata. Without a Kubernetes API the plugin reads the pod's labels, annotations, service
account and container ports from ``<pod_metadata_dir>/<namespace>/<pod>.json``::

    {"labels": {"app": "web"}, "annotations": {}, "serviceAccountName": "",
     "ports": [{"name": "serve-80-tcp", "protocol": "TCP", "port": 80}]}

which ``calico-lab pod add`` writes before it runs the CNI chain. A missing file means no
labels and no ports. As in Calico the endpoint's labels are the pod's plus
``projectcalico.org/namespace``, ``projectcalico.org/orchestrator`` and (with a service
account) ``projectcalico.org/serviceaccount``; named ports become ``spec.ports``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

K8S = "k8s"
CNI = "cni"
API_VERSION = "projectcalico.org/v3"
NAMESPACE_LABEL = "projectcalico.org/namespace"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
SERVICE_ACCOUNT_LABEL = "projectcalico.org/serviceaccount"
NAMESPACE_PROFILE_PREFIX = "kns."
SERVICE_ACCOUNT_PROFILE_PREFIX = "ksa."
IFNAMSIZ = 15


def _escape(part: str, what: str) -> str:
    if not part:
        raise ValueError(f"{what} must be set to build a WorkloadEndpoint name")
    if part.startswith("-") or part.endswith("-"):
        raise ValueError(f"{what} {part!r} must not begin or end with '-'")
    return part.replace("-", "--")


def wep_name(node: str, orchestrator: str, workload: str, endpoint: str) -> str:
    """``<node>-<orchestrator>-<workload>-<endpoint>``, dashes inside each part doubled."""
    return "-".join((
        _escape(node, "node"), _escape(orchestrator, "orchestrator"),
        _escape(workload, "workload"), _escape(endpoint, "endpoint"),
    ))


@dataclass(frozen=True)
class Identifiers:
    orchestrator: str
    node: str
    namespace: str
    pod: str  # "" for the cni orchestrator
    container_id: str
    endpoint: str  # CNI_IFNAME
    network: str

    @property
    def workload(self) -> str:
        return self.pod if self.orchestrator == K8S else self.container_id

    @property
    def workload_id(self) -> str:
        """``<namespace>.<pod>`` (k8s) or the container ID: hashed into the veth name."""
        return f"{self.namespace}.{self.pod}" if self.orchestrator == K8S else self.container_id

    @property
    def name(self) -> str:
        return wep_name(self.node, self.orchestrator, self.workload, self.endpoint)

    @property
    def host_ifname(self) -> str:
        if self.orchestrator == K8S:
            import hashlib

            digest = hashlib.sha1(self.workload_id.encode()).hexdigest()
            return ("cali" + digest)[:IFNAMSIZ]
        return ("cali" + self.container_id)[:IFNAMSIZ]

    @property
    def handle_id(self) -> str:
        return f"{self.network}.{self.container_id}"


def identifiers(
    cni_args: dict[str, str], container_id: str, ifname: str, node: str, network: str
) -> Identifiers:
    ns = cni_args.get("K8S_POD_NAMESPACE", "")
    pod = cni_args.get("K8S_POD_NAME", "")
    if ns and pod:
        return Identifiers(K8S, node, ns, pod, container_id, ifname, network)
    return Identifiers(CNI, node, "default", "", container_id, ifname, network)


def read_pod_metadata(directory: str, namespace: str, pod: str) -> dict[str, Any]:
    """The pod's metadata file, or ``{}`` when there is no directory or no file."""
    if not directory or not pod:
        return {}
    path = os.path.join(directory, namespace, f"{pod}.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"pod metadata {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"pod metadata {path} is not a JSON object")
    return data


def build(
    ids: Identifiers,
    *,
    ip_networks: list[str],
    mac: str,
    host_ifname: str,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """The WorkloadEndpoint resource (Calico's v3 JSON) for an ADD."""
    labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    sa = str(metadata.get("serviceAccountName") or "")
    labels[NAMESPACE_LABEL] = ids.namespace
    labels[ORCHESTRATOR_LABEL] = ids.orchestrator
    if ids.orchestrator == K8S:
        profiles = [f"{NAMESPACE_PROFILE_PREFIX}{ids.namespace}"]
        if sa:
            labels[SERVICE_ACCOUNT_LABEL] = sa
            profiles.append(f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{ids.namespace}.{sa}")
    else:
        profiles = [ids.network]
    spec: dict[str, Any] = {
        "orchestrator": ids.orchestrator,
        "node": ids.node,
        "containerID": ids.container_id,
        "endpoint": ids.endpoint,
        "ipNetworks": ip_networks,
        "profiles": profiles,
        "interfaceName": host_ifname,
        "mac": mac,
    }
    if ids.orchestrator == K8S:
        spec["pod"] = ids.pod
        if sa:
            spec["serviceAccountName"] = sa
    else:
        spec["workload"] = ids.container_id
    ports = [
        {"name": str(p["name"]), "protocol": str(p.get("protocol") or "TCP").upper(),
         "port": int(p["port"])}
        for p in metadata.get("ports") or []
        if isinstance(p, dict) and p.get("name") and p.get("port")
    ]
    if ports:
        spec["ports"] = ports
    meta: dict[str, Any] = {"name": ids.name, "namespace": ids.namespace, "labels": labels}
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict) and annotations:
        meta["annotations"] = {str(k): str(v) for k, v in annotations.items()}
    return {"apiVersion": API_VERSION, "kind": "WorkloadEndpoint", "metadata": meta, "spec": spec}


def network_profile(network: str) -> dict[str, Any]:
    """The profile Calico creates for a non-Kubernetes network: members talk to each other."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Profile",
        "metadata": {"name": network},
        "spec": {
            "ingress": [{"action": "Allow", "source": {"selector": f"has({network})"}}],
            "egress": [{"action": "Allow"}],
            "labelsToApply": {network: ""},
        },
    }
