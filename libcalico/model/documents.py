"""``load_documents(text, source)``: resources from YAML or JSON manifests.

Accepts what ``calicoctl apply -f`` accepts: one or more YAML documents separated by ``---``,
a JSON object or array, ``kind: List`` (or ``<Kind>List``) wrappers with ``items``, and
``networking.k8s.io/v1`` NetworkPolicies, which are converted to the Calico NetworkPolicy
Calico derives from them. Empty documents are skipped. Loading only checks the envelope
(``apiVersion``, ``kind``, a mapping); ``validate`` checks the rest.

YAML is read with PyYAML's safe loader, changed in two ways to match Go's decoder: timestamps
stay strings (``creationTimestamp`` round-trips unchanged) and a key repeated in one mapping is
an error rather than a silent overwrite.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import yaml

from libcalico.errors import ValidationError
from libcalico.model.checks import show, type_name
from libcalico.model.k8s import K8S_NETWORKING_API_VERSION, k8s_network_policy_to_calico
from libcalico.model.kinds import API_VERSION, KINDS, lookup_kind
from libcalico.model.types import Resource

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class _Loader(yaml.SafeLoader):
    """Safe loader without timestamp conversion, rejecting duplicate keys."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key '{key_node.value}'",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _yaml_error(source: str, err: yaml.YAMLError) -> ValidationError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    detail = f" ({context})" if context else ""
    return ValidationError(f"invalid YAML at {where}{problem}{detail}", resource=source)


def _parse(text: str, source: str) -> list[tuple[int, Any]]:
    """(first line, value) for each document."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            first_line = text[: len(text) - len(stripped)].count("\n") + 1
            return [(first_line, json.loads(text, object_pairs_hook=_no_duplicate_keys))]
        except ValueError:
            pass  # YAML flow style also starts with '{' or '['; let the YAML parser judge it
    docs: list[tuple[int, Any]] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            docs.append((node.start_mark.line + 1, loader.construct_document(node)))
    except yaml.YAMLError as e:
        raise _yaml_error(source, e) from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
    return docs


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key '{k}'")
        out[k] = v
    return out


def _where(source: str, line: int, index: int) -> str:
    return f"{source}: document {index} (line {line})"


def _resource(doc: Any, where: str) -> Resource:
    if not isinstance(doc, Mapping):
        raise ValidationError(f"expected a resource mapping, got {type_name(doc)} {show(doc)}",
                              resource=where)
    api = doc.get("apiVersion")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ValidationError("the document has no kind", resource=where, field="kind")
    if kind == "NetworkPolicy" and api == K8S_NETWORKING_API_VERSION:
        return k8s_network_policy_to_calico(doc)
    if kind not in KINDS:
        hint = ""
        try:
            hint = f" (did you mean {lookup_kind(kind).kind}?)"
        except ValidationError:
            pass
        raise ValidationError(
            f"unknown kind {show(kind)}{hint}; {API_VERSION} kinds are: "
            + ", ".join(sorted(KINDS)),
            resource=where,
            field="kind",
        )
    if api != API_VERSION:
        allowed = f"{API_VERSION}" + (
            f" (or {K8S_NETWORKING_API_VERSION} for a Kubernetes NetworkPolicy)"
            if kind == "NetworkPolicy"
            else ""
        )
        raise ValidationError(
            f"apiVersion {show(api)} is not supported for kind {kind}; use {allowed}",
            resource=where,
            field="apiVersion",
        )
    return cast(Resource, dict(doc))


def _expand(doc: Any, where: str) -> list[Resource]:
    if doc is None:
        return []
    if isinstance(doc, list):
        out: list[Resource] = []
        for i, item in enumerate(doc):
            out.extend(_expand(item, f"{where} item {i}"))
        return out
    if isinstance(doc, Mapping):
        kind = doc.get("kind")
        list_of = kind[:-4] if isinstance(kind, str) and kind.endswith("List") else None
        if kind == "List" or list_of in KINDS:
            items = doc.get("items")
            if items is None:
                return []
            if not isinstance(items, list):
                raise ValidationError(f"items must be a list, got {type_name(items)}",
                                      resource=where, field="items")
            out = []
            for i, item in enumerate(items):
                if list_of and isinstance(item, Mapping):
                    item = {"apiVersion": API_VERSION, "kind": list_of, **item}
                out.extend(_expand(item, f"{where} item {i}"))
            return out
    return [_resource(doc, where)]


def load_documents(text: str, source: str) -> list[Resource]:
    """Every resource in ``text``; ``source`` (a file name or ``<stdin>``) names it in errors."""
    resources: list[Resource] = []
    for index, (line, doc) in enumerate(_parse(text, source), start=1):
        resources.extend(_expand(doc, _where(source, line, index)))
    return resources
