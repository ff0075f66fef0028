"""Dispatcher: datastore updates -> the stages registered for their kind (Felix's AllUpdDispatcher).

Keys are parsed by ``libcalico.keys`` (the one module that knows etcd paths): resource keys
dispatch by kind with ``(namespace, name, value)``, IPAM block keys with ``(cidr, value)`` and
affinity keys with ``(host, cidr, value)``; ``value`` is the decoded JSON or ``None`` for a
deletion. A handler that raises on a malformed value gets the same key again as a deletion and
the error is logged, as Felix's validation filter turns invalid values into "absent".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from libcalico import keys
from libcalico.runtime.log import get_logger

log = get_logger(__name__)

ResourceHandler = Callable[[str, str, dict[str, Any] | None], None]
BlockHandler = Callable[[str, dict[str, Any] | None], None]
AffinityHandler = Callable[[str, str, dict[str, Any] | None], None]


class UpdateLike(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def value(self) -> Any: ...


class Dispatcher:
    def __init__(self) -> None:
        self._by_kind: dict[str, list[ResourceHandler]] = {}
        self._blocks: list[BlockHandler] = []
        self._affinities: list[AffinityHandler] = []
        self.ignored = 0

    def register(self, kind: str, handler: ResourceHandler) -> None:
        self._by_kind.setdefault(kind, []).append(handler)

    def register_block(self, handler: BlockHandler) -> None:
        self._blocks.append(handler)

    def register_affinity(self, handler: AffinityHandler) -> None:
        self._affinities.append(handler)

    def kinds(self) -> list[str]:
        return sorted(self._by_kind)

    def dispatch(self, update: UpdateLike) -> None:
        key = update.key
        value = update.value if isinstance(update.value, dict) else None
        rk = keys.parse_resource_key(key)
        if rk is not None:
            handlers = self._by_kind.get(rk.kind)
            if not handlers:
                self.ignored += 1
                return
            ns = rk.namespace or ""
            for handler in handlers:
                self._call(handler, key, (ns, rk.name), value)
            return
        block = keys.parse_block_key(key)
        if block is not None:
            for bh in self._blocks:
                self._call(bh, key, (str(block),), value)
            return
        affinity = keys.parse_affinity_key(key)
        if affinity is not None:
            for ah in self._affinities:
                self._call(ah, key, (affinity.host, str(affinity.cidr)), value)
            return
        self.ignored += 1

    @staticmethod
    def _call(handler: Callable[..., None], key: str, args: tuple[str, ...], value: Any) -> None:
        try:
            handler(*args, value)
        except Exception:
            if value is None:
                raise
            log.exception("invalid value, treating as deleted", key=key)
            handler(*args, None)
