"""``create``, ``apply``, ``replace`` and ``delete``: validate everything, check everything,
then write (see ``common`` for the order and why nothing is written on bad input).

Messages are Calico's: ``Successfully applied 1 'IPPool' resource(s)`` when every resource is
of one kind, ``Successfully applied 4 resource(s)`` otherwise; failures read
``Failed to apply 'IPPool' resource: <reason>`` (or ``... any resources: ...`` for several).
"""

from __future__ import annotations

import argparse
from typing import TextIO

from libcalico.cli.calicoctl.commands.common import (
    CommandFailed,
    Connector,
    Datastore,
    Resource,
    cluster_error,
    ident,
    kind_info,
    load_resources,
    meta,
    resolve_namespace,
    run_async,
    session,
    single_kind,
    target_from_args,
    validate_all,
)
from libcalico.errors import (
    AlreadyExistsError,
    CalicoError,
    ConflictError,
    NotFoundError,
)

PAST = {"create": "created", "apply": "applied", "replace": "replaced", "delete": "deleted"}


def _failed(verb: str, kind: str, count: int, reason: str) -> CommandFailed:
    if count == 1 and kind:
        return CommandFailed(f"Failed to {verb} '{kind}' resource: {reason}")
    if kind:
        return CommandFailed(f"Failed to {verb} any '{kind}' resources: {reason}")
    return CommandFailed(f"Failed to {verb} any resources: {reason}")


def _success(verb: str, kind: str, count: int) -> str:
    if kind:
        return f"Successfully {PAST[verb]} {count} '{kind}' resource(s)"
    return f"Successfully {PAST[verb]} {count} resource(s)"


def stale_version(resource: Resource, latest: str) -> ConflictError:
    rv = meta(resource).get("resourceVersion", "")
    return ConflictError(
        f"{ident(resource)} metadata.resourceVersion: resource version '{rv}' is out of date "
        f"(latest: {latest}); update the resource YAML/JSON in order to make changes",
        resource=ident(resource),
        field="metadata.resourceVersion",
        reason=f"resource version '{rv}' is out of date (latest: {latest})",
    )


def _not_found(resource: Resource) -> NotFoundError:
    return NotFoundError(
        f"resource does not exist: {ident(resource)}", resource=ident(resource),
        reason="resource does not exist",
    )


def _exists(resource: Resource) -> AlreadyExistsError:
    return AlreadyExistsError(
        f"resource already exists: {ident(resource)}", resource=ident(resource),
        reason="resource already exists",
    )


async def _current(ds: Datastore, resource: Resource) -> Resource | None:
    m = meta(resource)
    try:
        return await ds.get(str(resource["kind"]), str(m.get("name", "")), m.get("namespace") or "")
    except NotFoundError:
        return None


async def preflight(
    verb: str, ds: Datastore, resources: list[Resource], *, skip: bool = False
) -> list[bool]:
    """Check each resource against the datastore before writing any. Returns, per resource,
    whether to write it (False: skipped by --skip-exists / --skip-not-exists)."""
    todo: list[bool] = []
    seen: set[str] = set()
    for resource in resources:
        if verb == "create":
            if ident(resource) in seen:
                raise AlreadyExistsError(
                    f"{ident(resource)} is given more than once", resource=ident(resource),
                    reason="given more than once",
                )
            seen.add(ident(resource))
        current = await _current(ds, resource)
        rv = str(meta(resource).get("resourceVersion") or "")
        latest = str(meta(current).get("resourceVersion", "")) if current else ""
        write = True
        if verb == "create" and current is not None:
            if not skip:
                raise _exists(resource)
            write = False
        elif verb in ("replace", "delete") and current is None:
            if not (verb == "delete" and skip):
                raise _not_found(resource)
            write = False
        elif rv and current is not None and rv != latest:
            raise stale_version(resource, latest)
        if write and verb != "delete":
            # The service's own checks (those that need other resources) without writing.
            await _write_one(verb, ds, resource, dry_run=True)
        todo.append(write)
    return todo


async def _write_one(
    verb: str, ds: Datastore, resource: Resource, *, dry_run: bool = False
) -> Resource:
    if verb == "create":
        return await ds.create(resource, dry_run=dry_run)
    if verb == "apply":
        return await ds.apply(resource, dry_run=dry_run)
    if verb == "replace":
        return await ds.update(resource, dry_run=dry_run)
    m = meta(resource)
    return await ds.delete(
        str(resource["kind"]),
        str(m.get("name", "")),
        m.get("namespace") or "",
        str(m.get("resourceVersion") or ""),
    )


def _resources_from_args(args: argparse.Namespace) -> list[Resource]:
    """``delete KIND NAME...``: skeleton resources naming what to delete."""
    info = kind_info(args.kind)
    out = []
    for name in args.names:
        if not name:
            raise CommandFailed("resource name may not be empty")
        resource: Resource = {
            "apiVersion": "projectcalico.org/v3",
            "kind": info.kind,
            "metadata": {"name": name},
        }
        resolve_namespace(resource, bool(info.namespaced), args.namespace)
        out.append(resource)
    return out


def run(args: argparse.Namespace, out: TextIO, connector: Connector) -> int:
    verb: str = args.command
    by_file = bool(getattr(args, "filename", None))
    if by_file:
        resources = load_resources(args.filename, args.recursive, args.skip_empty)
        if not resources:
            print("No resources specified", file=out)
            return 0
    else:
        resources = _resources_from_args(args)
    kind = single_kind(resources) if by_file else resources[0]["kind"]
    count = len(resources)
    if verb == "apply":
        for resource in resources:
            if resource.get("kind") == "ClusterInformation":
                # As Calico: the datastore service owns it (version, cluster type, GUID).
                raise _failed(verb, kind, count, "operation apply is not supported on "
                              "ClusterInformation: resource is readonly")
    try:
        if verb == "delete":
            for resource in resources:
                info = kind_info(str(resource.get("kind", "")))
                if by_file:
                    resolve_namespace(resource, bool(info.namespaced), args.namespace)
        else:
            resources = validate_all(resources, args.namespace)
    except CalicoError as exc:
        raise _failed(verb, kind, count, cluster_error(exc)) from exc

    skip = bool(getattr(args, "skip_exists", False) or getattr(args, "skip_not_exists", False))
    target = target_from_args(args)

    async def _go() -> int:
        async with session(connector, target) as ds:
            try:
                todo = await preflight(verb, ds, resources, skip=skip)
            except CalicoError as exc:
                raise _failed(verb, kind, count, cluster_error(exc)) from exc
            handled = 0
            for resource, write in zip(resources, todo, strict=True):
                if write:
                    try:
                        await _write_one(verb, ds, resource)
                    except CalicoError as exc:
                        if handled:
                            noun = f"'{kind}' resources" if kind else "resources"
                            print(
                                f"Partial success: {PAST[verb]} the first {handled} out of "
                                f"{count} {noun}:",
                                file=out,
                            )
                            raise CommandFailed(f"Hit error: {cluster_error(exc)}") from exc
                        raise _failed(verb, kind, count, cluster_error(exc)) from exc
                handled += 1
            print(_success(verb, kind, handled), file=out)
            return 0

    result: int = run_async(_go())
    return result

