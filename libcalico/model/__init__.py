"""The ``projectcalico.org/v3`` resource model.

Resources are plain dicts in Calico's JSON shape (``apiVersion``, ``kind``, ``metadata``,
``spec``), typed with the TypedDicts in :mod:`libcalico.model.types`.

- :mod:`.kinds` - the kind registry ``KINDS``: plural, namespaced, calicoctl aliases, columns.
- :mod:`.validate` - ``validate(resource)``: defaults applied, first problem raised.
- :mod:`.documents` - ``load_documents(text, source)``: YAML/JSON manifests to resources.
- :mod:`.k8s` - Kubernetes NetworkPolicy conversion and namespace profiles.
- :mod:`.names` - DNS-1123 rules and WorkloadEndpoint name escaping.
"""

from libcalico.model.documents import load_documents
from libcalico.model.k8s import (
    K8S_NETWORKING_API_VERSION,
    k8s_network_policy_to_calico,
    namespace_profile,
    simplify_ports,
)
from libcalico.model.kinds import API_VERSION, KINDS, KindInfo, lookup_kind
from libcalico.model.names import WepName, parse_wep_name, wep_name, wep_name_prefix
from libcalico.model.types import ObjectMeta, Resource
from libcalico.model.validate import validate

__all__ = [
    "API_VERSION",
    "K8S_NETWORKING_API_VERSION",
    "KINDS",
    "KindInfo",
    "ObjectMeta",
    "Resource",
    "WepName",
    "k8s_network_policy_to_calico",
    "load_documents",
    "lookup_kind",
    "namespace_profile",
    "parse_wep_name",
    "simplify_ports",
    "validate",
    "wep_name",
    "wep_name_prefix",
]
