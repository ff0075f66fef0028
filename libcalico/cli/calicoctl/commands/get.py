"""``get``: list a kind, fetch resources by name or by ``-f``, print as ps/wide/yaml/json.

What is printed follows calicoctl (``output`` has the layouts):

- ``get KIND`` lists; tables show one row per resource, YAML/JSON show ``<Kind>List``.
- ``get KIND a b`` fetches each name; calicoctl prints one table per resource (each with its
  heading line and a blank line after it), and YAML/JSON of several resources as a sequence.
- Names that do not exist are reported after what was found, and the exit status is 1.
- ``-n NS`` or ``-A`` adds the NAMESPACE column for namespaced kinds; namespaced kinds default
  to the ``default`` namespace.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TextIO

from libcalico.cli.calicoctl import output
from libcalico.cli.calicoctl.commands.common import (
    CommandFailed,
    Connector,
    Datastore,
    Resource,
    cluster_error,
    kind_info,
    load_resources,
    meta,
    resolve_namespace,
    run_async,
    session,
    target_from_args,
)
from libcalico.errors import CalicoError, NotFoundError

DEFAULT_AS_NUMBER = "64512"
EXPORT_STRIP = ("namespace", "uid", "resourceVersion", "creationTimestamp",
                "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                "managedFields")


def table(
    info: Any,
    resources: Sequence[Resource],
    *,
    wide: bool,
    print_namespace: bool,
    columns: Sequence[str] | None = None,
    global_as_number: str = DEFAULT_AS_NUMBER,
) -> str:
    """One calicoctl table for ``resources`` of the kind ``info`` describes: its ps or wide
    headings (or ``columns`` from ``-o custom-columns=``), NAMESPACE first when asked for."""
    if columns:
        headings = tuple(columns)
        if print_namespace and info.namespaced:
            headings = ("NAMESPACE", *headings)
    else:
        headings = tuple(info.headings(wide=wide, all_namespaces=print_namespace))
    rows = [
        info.row(resource, headings, global_as_number=global_as_number)
        for resource in resources
    ]
    return output.render_table(headings, rows)


def _export(resource: Resource) -> Resource:
    m = dict(meta(resource))
    for key in EXPORT_STRIP:
        m.pop(key, None)
    return {**resource, "metadata": m}


class _Request:
    """One thing to fetch: a listing (name empty) or a named resource."""

    def __init__(self, info: Any, name: str, namespace: str) -> None:
        self.info = info
        self.name = name
        self.namespace = namespace


def _requests(args: argparse.Namespace) -> list[_Request]:
    if args.filename:
        reqs = []
        for resource in load_resources(args.filename, args.recursive, args.skip_empty):
            info = kind_info(str(resource.get("kind", "")))
            resolve_namespace(resource, bool(info.namespaced), args.namespace,
                              args.all_namespaces)
            name = str(meta(resource).get("name", ""))
            reqs.append(_Request(info, name, str(meta(resource).get("namespace", ""))))
        return reqs
    info = kind_info(args.kind)
    names = args.names or [""]
    reqs = []
    for name in names:
        skeleton: Resource = {"kind": info.kind, "metadata": {}}
        resolve_namespace(skeleton, bool(info.namespaced), args.namespace, args.all_namespaces)
        reqs.append(_Request(info, name, str(meta(skeleton).get("namespace", ""))))
    return reqs


def run(args: argparse.Namespace, out: TextIO, connector: Connector) -> int:
    reqs = _requests(args)
    for req in reqs:
        if req.name and req.info.namespaced and args.all_namespaces:
            raise CommandFailed(
                "Failed to get resources: cannot use --all-namespace flag for getting a single "
                "resource"
            )
    fmt: str = args.output
    columns: list[str] | None = None
    if fmt.startswith("custom-columns="):
        columns = [c.strip().upper() for c in fmt.split("=", 1)[1].split(",") if c.strip()]
    target = target_from_args(args)
    print_namespace = bool(args.all_namespaces or args.namespace)
    tables = fmt in ("ps", "wide") or columns is not None

    # Each result is ("list", info, items, revision) or ("one", info, resource).
    async def _fetch() -> tuple[list[tuple[Any, ...]], list[str], str]:
        results: list[tuple[Any, ...]] = []
        errors: list[str] = []
        async with session(connector, target) as ds:
            for req in reqs:
                try:
                    if req.name:
                        got = await ds.get(req.info.kind, req.name, req.namespace)
                        results.append(("one", req.info, got))
                    else:
                        items, revision = await ds.list(
                            req.info.kind, req.namespace, bool(args.all_namespaces)
                        )
                        results.append(("list", req.info, items, revision))
                except CalicoError as exc:
                    errors.append(cluster_error(exc))
            asn = DEFAULT_AS_NUMBER
            if tables and any(r[1].kind == "Node" for r in results):
                asn = await _global_as_number(ds)
        return results, errors, asn

    results, errors, asn = run_async(_fetch())
    if tables:
        for res in results:
            resources = res[2] if res[0] == "list" else [res[2]]
            try:
                text = table(res[1], resources, wide=fmt == "wide",
                             print_namespace=print_namespace, columns=columns,
                             global_as_number=asn)
            except CalicoError as exc:
                raise CommandFailed(cluster_error(exc)) from exc
            out.write(text)
    else:
        objs: list[Any] = []
        for res in results:
            if res[0] == "list":
                objs.append(output.list_object(res[1].kind, res[2], res[3]))
            else:
                objs.append(_export(res[2]) if args.export else res[2])
        if objs:
            doc: Any = objs[0] if len(objs) == 1 else objs
            out.write(output.render_json(doc) if fmt == "json" else output.render_yaml(doc))
    if errors:
        raise CommandFailed("; ".join(errors))
    return 0


async def _global_as_number(ds: Datastore) -> str:
    """What a Node without its own AS number shows: the default BGPConfiguration's asNumber,
    64512 when there is none, ``unknown`` when it cannot be read (as calicoctl)."""
    try:
        config = await ds.get("BGPConfiguration", "default")
    except NotFoundError:
        return DEFAULT_AS_NUMBER
    except CalicoError:
        return "unknown"
    spec = config.get("spec")
    value = spec.get("asNumber") if isinstance(spec, dict) else None
    return str(value) if value is not None else DEFAULT_AS_NUMBER
