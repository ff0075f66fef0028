"""Endpoint index and local-endpoint filter.

Holds every workload endpoint, host endpoint and network set in the cluster (compact records)
and keeps, per node, the endpoints whose ``spec.node`` is that node. On each change it moves the
item between label sets (acquiring the new label set before releasing the old, so an update
that keeps the labels never tears down and rebuilds matches), tells the IP-set registry which
members come and go, and hands endpoints of *subscribed* nodes to that node's view (Felix's
``endpointHostnameFilter``). Endpoints of nodes nobody subscribes to cost a record, a label-set
reference and their IP-set contributions: no policy matching.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ipsets import IPSetRegistry
from .label_index import LabelSetTable
from .records import (
    EndpointRecord,
    Item,
    ItemKey,
    NetworkSetRecord,
    host_endpoint,
    network_set,
    workload_endpoint,
)

EndpointListener = Callable[[EndpointRecord | None, EndpointRecord | None], None]


class EndpointIndex:
    def __init__(self, labels: LabelSetTable, ipsets: IPSetRegistry) -> None:
        self._labels = labels
        self._ipsets = ipsets
        self.items: dict[ItemKey, Item] = {}
        self.by_node: dict[str, dict[ItemKey, EndpointRecord]] = {}
        # node name -> the subscribed node's view callback (old, new)
        self.local_listeners: dict[str, EndpointListener] = {}

    # -- inputs ------------------------------------------------------------------------------

    def on_workload_endpoint(self, namespace: str, name: str, value: dict[str, Any] | None) -> None:
        rec = workload_endpoint(namespace, name, value) if value is not None else None
        self._put(("wep", namespace, name), rec)

    def on_host_endpoint(self, namespace: str, name: str, value: dict[str, Any] | None) -> None:
        self._put(("hep", "", name), host_endpoint(name, value) if value is not None else None)

    def on_network_set(self, namespace: str, name: str, value: dict[str, Any] | None) -> None:
        rec = network_set(namespace, name, value) if value is not None else None
        self._put(("netset", namespace, name), rec)

    def on_global_network_set(
        self, namespace: str, name: str, value: dict[str, Any] | None
    ) -> None:
        rec = network_set("", name, value) if value is not None else None
        self._put(("gnetset", "", name), rec)

    # -- the move ----------------------------------------------------------------------------

    def _put(self, key: ItemKey, rec: EndpointRecord | NetworkSetRecord | None) -> None:
        old = self.items.get(key)
        if rec is not None:
            ls = self._labels.acquire(rec.own_labels, rec.parents)
            rec.label_set = ls
            ls.items.add(rec)
            self.items[key] = rec
            self._ipsets.item_added(rec)
        elif old is None:
            return
        else:
            del self.items[key]
        if old is not None:
            self._ipsets.item_removed(old)
            old.label_set.items.discard(old)
        new_ep = rec if isinstance(rec, EndpointRecord) else None
        old_ep = old if isinstance(old, EndpointRecord) else None
        if old_ep is not None and (new_ep is None or new_ep.node != old_ep.node):
            # Gone, or moved to another node: the old node's view loses it.
            self._drop_local(old_ep)
            listener = self.local_listeners.get(old_ep.node)
            if listener is not None:
                listener(old_ep, None)
            old_ep = None
        if new_ep is not None:
            self.by_node.setdefault(new_ep.node, {})[key] = new_ep
            listener = self.local_listeners.get(new_ep.node)
            if listener is not None:
                listener(old_ep, new_ep)  # old_ep: the same node's previous version, if any
        if old is not None:
            self._labels.release(old.label_set)

    def _drop_local(self, ep: EndpointRecord) -> None:
        local = self.by_node.get(ep.node)
        if local is not None:
            local.pop(ep.key, None)
            if not local:
                del self.by_node[ep.node]

    def local(self, node: str) -> list[EndpointRecord]:
        return list(self.by_node.get(node, {}).values())
