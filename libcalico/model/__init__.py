"""The ``projectcalico.org/v3`` resource model.

Resources are plain dicts in Calico's JSON shape (``apiVersion``, ``kind``, ``metadata``,
``spec``), typed with the TypedDicts in :mod:`libcalico.model.types`.

- :mod:`.kinds` - the kind registry ``KINDS``: plural, namespaced, calicoctl aliases, columns.
- :mod:`.validate` - ``validate(resource)``: defaults applied, first problem raised.
- :mod:`.names` - DNS-1123 rules and WorkloadEndpoint name escaping.
"""

from libcalico.model.kinds import API_VERSION, KINDS, KindInfo, lookup_kind
from libcalico.model.names import WepName, parse_wep_name, wep_name, wep_name_prefix
from libcalico.model.types import ObjectMeta, Resource
from libcalico.model.validate import validate

__all__ = [
    "API_VERSION",
    "KINDS",
    "KindInfo",
    "ObjectMeta",
    "Resource",
    "WepName",
    "lookup_kind",
    "parse_wep_name",
    "validate",
    "wep_name",
    "wep_name_prefix",
]
