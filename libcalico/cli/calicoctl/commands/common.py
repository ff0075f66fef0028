"""What every calicoctl verb shares: reading ``-f``, namespaces, identifiers, the datastore.

Order of work in a writing verb (create, apply, replace, delete):

1. read every document (``load_documents``) and validate each one locally
   (``libcalico.model.validate``) -- any error stops here, before a connection is made;
2. connect, and check every document against the datastore (exists / does not exist /
   resourceVersion still current) -- any error stops here, nothing written;
3. write the documents in file order. Only a failure that appears between 2 and 3 (another
   writer racing us) can leave a partial result, which is then reported as Calico reports it
   (``Partial success: applied the first N out of M resources``).

Verbs reach the datastore through ``session(connector, target)``, which yields the
``Datastore`` protocol below: the connector's client (``libcalico.client.DatastoreClient``
from ``connect`` in production, a hand-written fake in unit tests) behind a wrapper that
bounds every call and turns "unreachable" into one line naming the target and how to start
the lab.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from libcalico.cli.calicoctl.config import DatastoreTarget, resolve_target, unix_socket_path
from libcalico.errors import CalicoError, UnavailableError, ValidationError

Resource = dict[str, Any]
T = TypeVar("T")

# How long one RPC may take before calicoctl reports the datastore unreachable.
RPC_TIMEOUT_S = 10.0
LAB_HINT = (
    "start the lab with 'calico-lab up' (it prints the CALICO_DATASTORE to export), or point "
    "calicoctl at a running datastore service with --datastore or CALICO_DATASTORE"
)


class CommandFailed(Exception):
    """A verb failed; ``str()`` is the one line printed on stderr before exit 1."""


class Datastore(Protocol):
    """The calls calicoctl makes. Errors are ``libcalico.errors`` classes."""

    async def create(self, resource: Resource, *, dry_run: bool = False) -> Resource: ...

    async def update(self, resource: Resource, *, dry_run: bool = False) -> Resource: ...

    async def apply(self, resource: Resource, *, dry_run: bool = False) -> Resource: ...

    async def delete(
        self, kind: str, name: str, namespace: str = "", resource_version: str = ""
    ) -> Resource: ...

    async def get(self, kind: str, name: str, namespace: str = "") -> Resource: ...

    async def list(
        self, kind: str, namespace: str = "", all_namespaces: bool = False
    ) -> tuple[list[Resource], int]: ...


# target -> async context manager yielding a client with DatastoreClient's methods
# (libcalico.client.DatastoreClient, or a fake in tests)
Connector = Callable[[DatastoreTarget], AbstractAsyncContextManager[Any]]


# -- resources ---------------------------------------------------------------------------------


def meta(resource: Mapping[str, Any]) -> dict[str, Any]:
    m = resource.get("metadata")
    return m if isinstance(m, dict) else {}


def ident(resource: Mapping[str, Any]) -> str:
    """Calico's identifier for messages: ``IPPool(name)`` or ``NetworkPolicy(ns/name)``."""
    m = meta(resource)
    kind = str(resource.get("kind", "?"))
    name = str(m.get("name", ""))
    ns = m.get("namespace")
    return f"{kind}({ns}/{name})" if ns else f"{kind}({name})"


def kind_info(kind_or_alias: str) -> Any:
    """The model's KindInfo for a kind name, plural or alias (case-insensitive)."""
    from libcalico.model import lookup_kind

    try:
        return lookup_kind(kind_or_alias)
    except (KeyError, LookupError, ValidationError) as exc:
        raise CommandFailed(f"resource type '{kind_or_alias}' is not supported") from exc


def resolve_namespace(
    resource: Resource, namespaced: bool, cli_ns: str, all_ns: bool = False
) -> None:
    """Fill in or check ``metadata.namespace`` as calicoctl does (in place).

    Namespaced kinds take the resource's namespace, else ``-n``, else ``default``; a resource
    and ``-n`` that disagree is an error. Cluster-scoped kinds refuse a namespace either way.
    With ``all_ns`` (listing) the namespace is cleared.
    """
    m = resource.setdefault("metadata", {})
    res_ns = m.get("namespace") or ""
    kind = resource.get("kind", "?")
    if namespaced:
        if all_ns and cli_ns:
            raise CommandFailed(
                "cannot use both --namespace and --all-namespaces flags at the same time"
            )
        if all_ns:
            m.pop("namespace", None)
        elif not res_ns:
            m["namespace"] = cli_ns or "default"
        elif cli_ns and res_ns != cli_ns:
            raise CommandFailed(
                f"{ident(resource)}: resource namespace does not match client namespace. "
                f"{res_ns} != {cli_ns}"
            )
    elif res_ns:
        raise CommandFailed(
            f"{ident(resource)} metadata.namespace: namespace should not be specified for a "
            f"non-namespaced resource. {kind} is not a namespaced resource"
        )
    elif all_ns or cli_ns:
        raise CommandFailed(f"{kind} is not namespaced")


# -- reading -f --------------------------------------------------------------------------------


def read_sources(filename: str, recursive: bool) -> list[tuple[str, str]]:
    """``(source, text)`` for ``-f``: stdin for ``-``, a file, or a directory's
    .yaml/.yml/.json files in name order (``recursive`` descends)."""
    if filename == "-":
        return [("<stdin>", sys.stdin.read())]
    path = Path(filename)
    try:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(
                p for p in path.glob(pattern)
                if p.is_file() and p.suffix in (".yaml", ".yml", ".json")
            )
            return [(str(p), p.read_text()) for p in files]
        return [(filename, path.read_text())]
    except OSError as exc:
        raise CommandFailed(
            f"Failed to execute command: open {filename}: {exc.strerror or exc}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise CommandFailed(f"Failed to execute command: {filename}: not UTF-8 text") from exc


def load_resources(
    filename: str, recursive: bool = False, skip_empty: bool = False
) -> list[Resource]:
    """Every resource in ``-f`` (multi-document YAML, JSON, ``kind: List`` expanded)."""
    from libcalico.model import load_documents

    resources: list[Resource] = []
    for source, text in read_sources(filename, recursive):
        try:
            docs = load_documents(text, source)
        except CalicoError as exc:
            raise CommandFailed(f"Failed to execute command: {exc}") from exc
        if not docs and not skip_empty:
            raise CommandFailed(f"No resources specified in file {source}")
        resources.extend(dict(d) for d in docs)
    if not resources and not skip_empty:
        raise CommandFailed(f"No resources specified in directory {filename}")
    return resources


def single_kind(resources: list[Resource]) -> str:
    kinds = {str(r.get("kind", "")) for r in resources}
    return kinds.pop() if len(kinds) == 1 else ""


def validate_all(resources: list[Resource], cli_ns: str) -> list[Resource]:
    """Namespace handling and local validation of every resource, before any write.
    Raises ``CalicoError`` (a ValidationError) or ``CommandFailed`` naming the resource."""
    from libcalico.model import validate

    out = []
    for resource in resources:
        info = kind_info(str(resource.get("kind", "")))
        resolve_namespace(resource, bool(info.namespaced), cli_ns)
        out.append(dict(validate(resource)))
    return out


# -- the datastore -----------------------------------------------------------------------------


def unreachable(target: DatastoreTarget, reason: str) -> CommandFailed:
    return CommandFailed(
        f"Failed to reach the datastore at {target.target} (from {target.source}): {reason}; "
        f"{LAB_HINT}"
    )


class _Deadlined:
    """Wraps the client so every call is bounded and an unreachable service is reported once,
    with the target and how to start the lab."""

    def __init__(self, client: Any, target: DatastoreTarget) -> None:
        self._client = client
        self._target = target

    async def _call(self, coro: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(coro, RPC_TIMEOUT_S)
        except TimeoutError as exc:
            raise unreachable(self._target, f"no answer within {RPC_TIMEOUT_S:g}s") from exc
        except UnavailableError as exc:
            reason = exc.message
            prefix = f"cannot reach the datastore at {self._target.target}: "
            if reason.startswith(prefix):
                reason = reason[len(prefix):]
            raise unreachable(self._target, reason) from exc

    async def create(self, resource: Resource, *, dry_run: bool = False) -> Resource:
        return dict(await self._call(self._client.create(resource, dry_run=dry_run)))

    async def update(self, resource: Resource, *, dry_run: bool = False) -> Resource:
        return dict(await self._call(self._client.update(resource, dry_run=dry_run)))

    async def apply(self, resource: Resource, *, dry_run: bool = False) -> Resource:
        return dict(await self._call(self._client.apply(resource, dry_run=dry_run)))

    async def delete(
        self, kind: str, name: str, namespace: str = "", resource_version: str = ""
    ) -> Resource:
        return dict(
            await self._call(
                self._client.delete(
                    kind, name, namespace=namespace or None,
                    resource_version=resource_version or None,
                )
            )
        )

    async def get(self, kind: str, name: str, namespace: str = "") -> Resource:
        return dict(await self._call(self._client.get(kind, name, namespace=namespace or None)))

    async def list(
        self, kind: str, namespace: str = "", all_namespaces: bool = False
    ) -> tuple[list[Resource], int]:
        items, revision = await self._call(
            self._client.list(kind, namespace=namespace or None, all_namespaces=all_namespaces)
        )
        return [dict(i) for i in items], int(revision)


def target_from_args(args: Any) -> DatastoreTarget:
    try:
        return resolve_target(
            getattr(args, "datastore", None), getattr(args, "config", None), os.environ
        )
    except CalicoError as exc:
        raise CommandFailed(str(exc)) from exc


def connect(target: DatastoreTarget) -> AbstractAsyncContextManager[Any]:
    """The real connector: a ``DatastoreClient`` for ``target`` (every call bounded by
    ``RPC_TIMEOUT_S``); a missing unix socket fails at once, before gRPC is loaded."""
    path = unix_socket_path(target.target)
    if path is not None and not os.path.exists(path):
        raise unreachable(target, f"socket {path} does not exist")
    from libcalico.client import DatastoreClient

    return DatastoreClient(target.target, timeout=RPC_TIMEOUT_S)


@asynccontextmanager
async def session(connector: Connector, target: DatastoreTarget) -> AsyncIterator[Datastore]:
    """What a verb talks to: the connector's client behind ``_Deadlined``, so that an
    unreachable datastore is reported the same way whatever the connector."""
    async with connector(target) as client:
        yield _Deadlined(client, target)


def run_async(coro: Awaitable[T]) -> T:
    async def _main() -> T:
        return await coro

    return asyncio.run(_main())


def cluster_error(exc: CalicoError) -> str:
    """A domain error as one line (messages already name the resource, field and reason)."""
    return " ".join(str(exc).split("\n"))
