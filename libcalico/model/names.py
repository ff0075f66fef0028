"""Resource naming rules: DNS-1123 names, Kubernetes label syntax, WorkloadEndpoint names.

A WorkloadEndpoint's name is built from four identifiers joined with ``-``:
``<node>-<orchestrator>-<workload>-<endpoint>``. A dash inside an identifier is doubled
(``my-pod`` becomes ``my--pod``), so the name can be split again without ambiguity. For the
``k8s`` orchestrator the workload segment is the pod name, for ``cni`` the container ID, for
``libnetwork`` it is the literal ``libnetwork``; any other orchestrator uses its workload name.
No identifier may begin or end with a dash, since that would make the escaping ambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from libcalico.errors import ValidationError

LABEL_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
SUBDOMAIN_FMT = LABEL_FMT + r"(\." + LABEL_FMT + r")*"

DNS1123_LABEL_RE = re.compile("^" + LABEL_FMT + "$")
DNS1123_SUBDOMAIN_RE = re.compile("^" + SUBDOMAIN_FMT + "$")
DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253

# Kubernetes "qualified name": [prefix/]name where name is 63 chars of [A-Za-z0-9_.-] that
# begin and end alphanumeric, and prefix is a DNS-1123 subdomain.
_QUALIFIED_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

K8S_ORCHESTRATOR = "k8s"
CNI_ORCHESTRATOR = "cni"
LIBNETWORK_ORCHESTRATOR = "libnetwork"


def is_dns1123_label(name: str) -> bool:
    return len(name) <= DNS1123_LABEL_MAX and DNS1123_LABEL_RE.match(name) is not None


def is_dns1123_subdomain(name: str) -> bool:
    return len(name) <= DNS1123_SUBDOMAIN_MAX and DNS1123_SUBDOMAIN_RE.match(name) is not None


def qualified_name_problem(key: str) -> str | None:
    """Why ``key`` is not a valid Kubernetes label/annotation key, or None if it is."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return "prefix part must be non-empty"
        if not is_dns1123_subdomain(prefix):
            return f"prefix part '{prefix}' must be a lowercase DNS-1123 subdomain"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return f"name part must be no more than 63 characters (has {len(name)})"
    if not _QUALIFIED_NAME_RE.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must"
            " start and end with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes label value, or None if it is."""
    if len(value) > 63:
        return f"must be no more than 63 characters (has {len(value)})"
    if not _LABEL_VALUE_RE.match(value):
        return (
            "must be empty or consist of alphanumeric characters, '-', '_' or '.', and must"
            " start and end with an alphanumeric character"
        )
    return None


class WepName(NamedTuple):
    """The four identifiers encoded in a WorkloadEndpoint name."""

    node: str
    orchestrator: str
    workload: str
    endpoint: str


def _escape(field: str, value: str) -> str:
    if not value:
        raise ValidationError(f"{field} must be set to build a WorkloadEndpoint name", field=field)
    if value.startswith("-") or value.endswith("-"):
        raise ValidationError(
            f"'{value}' must not begin or end with '-' (it is part of a WorkloadEndpoint name)",
            field=field,
        )
    return value.replace("-", "--")


def wep_name(node: str, orchestrator: str, workload: str, endpoint: str) -> str:
    """``<node>-<orchestrator>-<workload>-<endpoint>`` with each ``-`` inside a part doubled.

    For the ``libnetwork`` orchestrator the workload segment is always ``libnetwork``.
    """
    if orchestrator == LIBNETWORK_ORCHESTRATOR:
        workload = LIBNETWORK_ORCHESTRATOR
    return "-".join(
        (
            _escape("node", node),
            _escape("orchestrator", orchestrator),
            _escape("workload", workload),
            _escape("endpoint", endpoint),
        )
    )


def wep_name_prefix(node: str, orchestrator: str | None = None, workload: str | None = None) -> str:
    """The name prefix shared by every endpoint of a node (and orchestrator, and workload).

    A prefix match can also pick up a longer escaped identifier (``pod`` matches the prefix of
    ``pod--1``), so callers must confirm matches with :func:`parse_wep_name`.
    """
    parts = [_escape("node", node)]
    if orchestrator is not None:
        parts.append(_escape("orchestrator", orchestrator))
        if workload is not None:
            parts.append(_escape("workload", workload))
    elif workload is not None:
        raise ValueError("a workload needs an orchestrator in a WorkloadEndpoint name prefix")
    return "-".join(parts) + "-"


def _split(name: str) -> list[str]:
    parts: list[str] = []
    start = 0
    i = 1
    while i < len(name):
        if name[i] == "-":
            if i + 1 < len(name) and name[i + 1] == "-":
                i += 2  # an escaped dash inside a segment
                continue
            parts.append(name[start:i].replace("--", "-"))
            start = i + 1
        i += 1
    parts.append(name[start:].replace("--", "-"))
    return parts


def parse_wep_name(name: str) -> WepName:
    """Split a WorkloadEndpoint name back into its four identifiers."""
    parts = _split(name) if name else []
    if len(parts) != 4 or not all(parts):
        raise ValidationError(
            f"'{name}' is not a WorkloadEndpoint name of the form"
            " <node>-<orchestrator>-<workload>-<endpoint> (dashes inside a part doubled)",
            field="metadata.name",
        )
    return WepName(*parts)


def wep_name_for_spec(spec: Mapping[str, Any]) -> str:
    """The name Calico requires for a WorkloadEndpoint with this spec."""
    orchestrator = str(spec.get("orchestrator") or "")
    if orchestrator == K8S_ORCHESTRATOR:
        workload, field = spec.get("pod"), "spec.pod"
    elif orchestrator == CNI_ORCHESTRATOR:
        workload, field = spec.get("containerID"), "spec.containerID"
    else:
        workload, field = spec.get("workload"), "spec.workload"
    values = {
        "spec.node": str(spec.get("node") or ""),
        "spec.orchestrator": orchestrator,
        field: str(workload or ""),
        "spec.endpoint": str(spec.get("endpoint") or ""),
    }
    if orchestrator == LIBNETWORK_ORCHESTRATOR:
        values[field] = LIBNETWORK_ORCHESTRATOR
    escaped = [_escape(f, v) for f, v in values.items()]
    return "-".join(escaped)
