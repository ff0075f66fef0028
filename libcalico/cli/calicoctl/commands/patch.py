"""``patch`` and ``label``: read-modify-write of one resource, compare-and-swap on its
resourceVersion.

``patch`` takes a JSON or YAML merge patch (RFC 7386: mappings merge, ``null`` removes a key,
anything else -- lists included -- replaces). Calico's default "strategic" merge behaves the
same on Calico's resources, whose lists have no merge keys; ``--type json`` (RFC 6902) is not
implemented, as in Calico. The patched resource is validated locally before it is written.

``label`` adds (``key=value``), updates (``--overwrite``) or removes (``key --remove``) one
label. A conflicting concurrent write makes it re-read and retry, a bounded number of times.
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any, TextIO

from libcalico.cli.calicoctl.commands.common import (
    CommandFailed,
    Connector,
    Datastore,
    Resource,
    cluster_error,
    kind_info,
    meta,
    resolve_namespace,
    run_async,
    session,
    target_from_args,
)
from libcalico.errors import CalicoError, ConflictError, ValidationError

LABEL_RETRIES = 5


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``target`` by ``patch`` (neither is modified)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def parse_patch(text: str) -> dict[str, Any]:
    """The patch as a mapping; JSON first, then YAML (a superset that also reads flow style)."""
    try:
        value = json.loads(text)
    except ValueError:
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise ValidationError(f"patch is neither JSON nor YAML: {reason}",
                                  field="--patch") from exc
    if not isinstance(value, dict):
        raise ValidationError("patch must be a JSON or YAML mapping, e.g. "
                              """'{"spec":{"natOutgoing":false}}'""", field="--patch")
    return value


def _target(args: argparse.Namespace) -> tuple[Any, str]:
    info = kind_info(args.kind)
    skeleton: Resource = {"kind": info.kind, "metadata": {"name": args.name}}
    resolve_namespace(skeleton, bool(info.namespaced), args.namespace)
    return info, str(meta(skeleton).get("namespace", ""))


def _patched(current: Resource, patch: dict[str, Any]) -> Resource:
    from libcalico.model import validate

    result = merge_patch(current, patch)
    # Identity and version come from the stored resource: the write is a CAS on them.
    m = result.setdefault("metadata", {})
    cm = meta(current)
    for key in ("name", "namespace", "resourceVersion", "uid", "creationTimestamp"):
        if key in cm:
            m[key] = cm[key]
    result["kind"] = current.get("kind")
    result["apiVersion"] = current.get("apiVersion", "projectcalico.org/v3")
    return dict(validate(result))


def run_patch(args: argparse.Namespace, out: TextIO, connector: Connector) -> int:
    if args.type == "json":
        raise CommandFailed("Failed to patch: patch type 'json' (RFC 6902) is not implemented; "
                            "use a merge patch")
    info, namespace = _target(args)
    try:
        patch = parse_patch(args.patch)
    except ValidationError as exc:
        raise CommandFailed(f"Failed to patch '{info.kind}' resource: {exc}") from exc
    target = target_from_args(args)

    async def _go() -> None:
        async with session(connector, target) as ds:
            current = await ds.get(info.kind, args.name, namespace)
            await ds.update(_patched(current, patch))

    try:
        run_async(_go())
    except CalicoError as exc:
        raise CommandFailed(
            f"Failed to patch '{info.kind}' resource: {cluster_error(exc)}"
        ) from exc
    print(f"Successfully patched 1 '{info.kind}' resource", file=out)
    return 0


def run_label(args: argparse.Namespace, out: TextIO, connector: Connector) -> int:
    kind, name = args.kind, args.name
    if args.remove:
        key, value = args.label, ""
        if "=" in key:
            raise CommandFailed(f"invalid label {key}: --remove takes a key, not key=value")
    else:
        parts = args.label.split("=")
        if len(parts) != 2 or not parts[0]:
            raise CommandFailed(f"invalid label {args.label}")
        key, value = parts
    info, namespace = _target(args)
    target = target_from_args(args)

    async def _once(ds: Datastore) -> str:
        try:
            current = await ds.get(info.kind, name, namespace)
        except CalicoError as exc:
            raise CommandFailed(
                f"failed to get {kind} {name}, error {cluster_error(exc)}"
            ) from exc
        labels = dict(meta(current).get("labels") or {})
        action = "set"
        if args.remove:
            if key not in labels:
                raise CommandFailed(
                    f"cannot remove label of {kind} {name}, key {key} does not exist"
                )
            del labels[key]
            action = "removed"
        elif key in labels:
            if not args.overwrite and labels[key] != value:
                raise CommandFailed(
                    f"failed to update label of {kind} {name}, key {key} is already present. "
                    "please use '--overwrite' to set a new value."
                )
            labels[key] = value
            action = "updated"
        else:
            labels[key] = value
        updated = copy.deepcopy(current)
        updated.setdefault("metadata", {})["labels"] = labels
        if not labels:
            updated["metadata"].pop("labels")
        from libcalico.model import validate

        try:
            await ds.update(dict(validate(updated)))
        except ConflictError:
            raise
        except CalicoError as exc:
            raise CommandFailed(
                f"failed to update {kind} {name}, label not changed: {cluster_error(exc)}"
            ) from exc
        return action

    async def _go() -> str:
        async with session(connector, target) as ds:
            for attempt in range(LABEL_RETRIES):
                try:
                    return await _once(ds)
                except ConflictError as exc:
                    if attempt == LABEL_RETRIES - 1:
                        raise CommandFailed(
                            f"failed to update {kind} {name}, label not changed: "
                            f"{cluster_error(exc)}"
                        ) from exc
        raise AssertionError("unreachable")

    action = run_async(_go())
    if action == "removed":
        print(f"Successfully removed label {key} from {kind} {name}", file=out)
    elif action == "updated":
        print(f"Successfully updated label {key} on {kind} {name}", file=out)
    else:
        print(f"Successfully set label {key} on {kind} {name}", file=out)
    return 0
