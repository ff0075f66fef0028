"""Kubernetes namespaces as the lab keeps them: one ``kns.<name>`` Profile each.

Calico's Kubernetes datastore derives a Profile per namespace; with etcd, kube-controllers
writes it. Either way it carries the namespace's labels as ``labelsToApply``, each key
prefixed ``pcns.``, plus ``pcns.projectcalico.org/name``, and allows all traffic, so a
namespace adds labels to its pods' endpoints and no policy of its own. Kubernetes (1.21+)
gives every namespace the label ``kubernetes.io/metadata.name=<name>``, so the lab does too.
The lab writes the same resource (``libcalico.model.namespace_profile``); the namespace's
labels are read back from it, so the datastore is the only record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libcalico.client import DatastoreClient
from libcalico.errors import AlreadyExistsError, ConflictError, NotFoundError, ValidationError
from libcalico.model import namespace_profile
from libcalico.model.names import is_dns1123_label, label_value_problem, qualified_name_problem

PREFIX = "kns."
LABEL_PREFIX = "pcns."
NAME_LABEL = "kubernetes.io/metadata.name"
CALICO_NAME_LABEL = "projectcalico.org/name"


def profile(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The ``kns.<name>`` profile for a namespace with these labels (and the automatic
    ``kubernetes.io/metadata.name``)."""
    return dict(namespace_profile(name, {**labels, NAME_LABEL: name}))


def check_name(name: str) -> None:
    if not is_dns1123_label(name):
        raise ValidationError(
            f"namespace {name!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending alphanumeric, at most 63 characters)")


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; validated as Kubernetes labels."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValidationError(f"label {part!r} is not key=value")
        check_label(key.strip(), value.strip())
        out[key.strip()] = value.strip()
    return out


def check_label(key: str, value: str) -> None:
    problem = qualified_name_problem(key)
    if problem:
        raise ValidationError(f"label key {key!r}: {problem}")
    problem = label_value_problem(value)
    if problem:
        raise ValidationError(f"label value {value!r} of {key!r}: {problem}")


def labels_of(profile: Mapping[str, Any]) -> dict[str, str]:
    """The namespace's own labels from its profile (without the metadata.name one)."""
    apply = (profile.get("spec") or {}).get("labelsToApply") or {}
    return {
        k[len(LABEL_PREFIX):]: str(v) for k, v in apply.items()
        if k.startswith(LABEL_PREFIX)
        and k[len(LABEL_PREFIX):] not in (NAME_LABEL, CALICO_NAME_LABEL)
    }


async def get(ds: DatastoreClient, name: str) -> dict[str, Any] | None:
    try:
        return await ds.get("Profile", PREFIX + name)
    except NotFoundError:
        return None


async def ensure(
    ds: DatastoreClient, name: str, labels: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], bool]:
    """The namespace's profile, created when missing (with ``labels``); (profile, created)."""
    check_name(name)
    current = await get(ds, name)
    if current is not None:
        return current, False
    try:
        return await ds.create(profile(name, dict(labels or {}))), True
    except AlreadyExistsError:
        again = await get(ds, name)
        assert again is not None
        return again, False


async def add(ds: DatastoreClient, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """``ns add``: create; an existing namespace gets these labels added (like ``ns label``)."""
    profile, created = await ensure(ds, name, labels)
    if created or not labels:
        return profile
    return await relabel(ds, name, dict(labels))


async def relabel(
    ds: DatastoreClient, name: str, changes: Mapping[str, str | None]
) -> dict[str, Any]:
    """Set (value) or remove (None) labels; compare-and-swap on the profile's revision."""
    check_name(name)
    for _ in range(5):
        current = await get(ds, name)
        if current is None:
            raise NotFoundError(f"namespace {name!r} does not exist (calico-lab ns add {name})")
        labels = labels_of(current)
        for key, value in changes.items():
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
        desired = profile(name, labels)
        meta: dict[str, Any] = dict(current["metadata"])
        meta["name"] = PREFIX + name
        desired["metadata"] = meta
        try:
            return await ds.update(desired)
        except ConflictError:  # a concurrent change: read again and retry
            continue
    raise ConflictError(f"namespace {name} kept changing; try again")


async def list_all(ds: DatastoreClient) -> list[tuple[str, dict[str, str]]]:
    items, _ = await ds.list("Profile")
    out = []
    for p in items:
        pname = str(p["metadata"]["name"])
        if pname.startswith(PREFIX):
            out.append((pname[len(PREFIX):], labels_of(p)))
    return sorted(out)
