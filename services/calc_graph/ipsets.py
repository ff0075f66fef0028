"""Cluster-wide IP-set membership, computed once and shared by every node that needs the set.

An IP set is active while at least one subscribed node has an active policy or profile whose
rules reference it (the rule scanner acquires it per node). Its members are the addresses of
every endpoint and network set in the cluster whose effective labels match its selector, or,
for a named-port set, ``ip,proto:port`` of matching endpoints that have the named port.

Members are refcounted (two endpoints may carry the same address) and each change since the
last flush is recorded once as a delta with add/remove cancelling, so at flush time every node
that already had the set receives the *same* ``IPSetDeltaUpdate`` message object. A set that
became active in this flush cycle records no deltas: nodes that need it get a full
``IPSetUpdate`` with the current members.

Deactivation is deferred to the end of the flush: a set released and re-acquired within one
cycle keeps continuous membership tracking, so nodes that kept it never miss a delta.
"""

from __future__ import annotations

from collections.abc import Mapping

from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.selector import Selector

from .label_index import LabelSet, SelectorIndex
from .records import Item

IP = fb.IPSetUpdate.IP
IP_AND_PORT = fb.IPSetUpdate.IP_AND_PORT
NET = fb.IPSetUpdate.NET


class IPSetSpec:
    """What an IP-set ID stands for: a selector, optionally narrowed to a named port."""

    __slots__ = ("id", "named_port", "selector", "service", "type")

    def __init__(
        self,
        set_id: str,
        selector: Selector | None,
        named_port: tuple[str, str] | None = None,
        service: str = "",
        set_type: int = NET,
    ) -> None:
        self.id = set_id
        self.selector = selector
        self.named_port = named_port  # (protocol, port name)
        self.service = service  # services are not indexed yet: such sets stay empty
        self.type = set_type


class IPSetState:
    __slots__ = ("added", "fresh", "members", "refs", "removed", "spec")

    def __init__(self, spec: IPSetSpec) -> None:
        self.spec = spec
        self.members: dict[str, int] = {}
        self.added: set[str] = set()
        self.removed: set[str] = set()
        self.refs = 0
        self.fresh = True


class IPSetRegistry:
    """Active IP sets with their members; a ``LabelSetTable`` listener."""

    def __init__(self) -> None:
        self.index: SelectorIndex[str] = SelectorIndex(self._match_started, self._match_stopped)
        self.sets: dict[str, IPSetState] = {}
        self._by_selector: dict[str, set[str]] = {}
        self._unneeded: set[str] = set()
        self._changed: set[str] = set()
        self._delta_cache: dict[str, fb.ToDataplane | None] = {}
        self._full_cache: dict[str, list[fb.ToDataplane]] = {}
        self._fresh: set[str] = set()

    # -- label-set listener ------------------------------------------------------------------

    def on_label_set_added(self, ls: LabelSet) -> None:
        self.index.add_item(ls)

    def on_label_set_changed(self, ls: LabelSet, old_labels: Mapping[str, str]) -> None:
        self.index.item_labels_changed(ls, old_labels)

    def on_label_set_removed(self, ls: LabelSet) -> None:
        self.index.remove_item(ls)

    # -- items joining and leaving label sets -----------------------------------------------

    def item_added(self, item: Item) -> None:
        sels = self.index.item_sels.get(item.label_set)
        if sels:
            for sel in sels:
                for set_id in self._by_selector.get(sel, ()):
                    self._contribute(self.sets[set_id], item, 1)

    def item_removed(self, item: Item) -> None:
        sels = self.index.item_sels.get(item.label_set)
        if sels:
            for sel in sels:
                for set_id in self._by_selector.get(sel, ()):
                    self._contribute(self.sets[set_id], item, -1)

    def _match_started(self, sel: str, ls: LabelSet) -> None:
        for set_id in self._by_selector.get(sel, ()):
            st = self.sets[set_id]
            for item in ls.items:
                self._contribute(st, item, 1)

    def _match_stopped(self, sel: str, ls: LabelSet) -> None:
        for set_id in self._by_selector.get(sel, ()):
            st = self.sets[set_id]
            for item in ls.items:
                self._contribute(st, item, -1)

    def _contribute(self, st: IPSetState, item: Item, delta: int) -> None:
        spec = st.spec
        if spec.service:
            return
        if spec.named_port is None:
            members: tuple[str, ...] | list[str] = item.nets
        else:
            members = item.named_port_members(spec.named_port[1], spec.named_port[0])
        counts = st.members
        if delta > 0:
            for m in members:
                n = counts.get(m, 0)
                counts[m] = n + 1
                if n == 0 and not st.fresh:
                    self._record(st, m, True)
        else:
            for m in members:
                n = counts[m]
                if n > 1:
                    counts[m] = n - 1
                else:
                    del counts[m]
                    if not st.fresh:
                        self._record(st, m, False)

    def _record(self, st: IPSetState, member: str, added: bool) -> None:
        if added:
            if member in st.removed:
                st.removed.discard(member)
            else:
                st.added.add(member)
        elif member in st.added:
            st.added.discard(member)
        else:
            st.removed.add(member)
        self._changed.add(st.spec.id)

    # -- activation, refcounted by nodes -----------------------------------------------------

    def acquire(self, spec: IPSetSpec) -> None:
        st = self.sets.get(spec.id)
        if st is not None:
            st.refs += 1
            self._unneeded.discard(spec.id)
            return
        st = IPSetState(spec)
        st.refs = 1
        self.sets[spec.id] = st
        self._fresh.add(spec.id)
        if spec.selector is None:
            return
        sel = spec.selector.unique_id
        users = self._by_selector.get(sel)
        if users is not None:
            users.add(spec.id)
            for ls in self.index.sel_items.get(sel, ()):
                for item in ls.items:
                    self._contribute(st, item, 1)
        else:
            self._by_selector[sel] = {spec.id}
            self.index.update_selector(sel, spec.selector)

    def release(self, set_id: str) -> None:
        st = self.sets[set_id]
        st.refs -= 1
        if st.refs == 0:
            self._unneeded.add(set_id)

    def members(self, set_id: str) -> list[str]:
        return list(self.sets[set_id].members)

    # -- flush ------------------------------------------------------------------------------

    def delta_message(self, set_id: str) -> fb.ToDataplane | None:
        """This cycle's delta for a set, one shared message for every node that has the set."""
        if set_id not in self._changed:
            return None
        if set_id in self._delta_cache:
            return self._delta_cache[set_id]
        st = self.sets.get(set_id)
        msg = None
        if st is not None and (st.added or st.removed):
            msg = fb.ToDataplane(
                ipset_delta_update=fb.IPSetDeltaUpdate(
                    id=set_id, added_members=st.added, removed_members=st.removed
                )
            )
        self._delta_cache[set_id] = msg
        return msg

    def full_messages(self, set_id: str, chunk: int) -> list[fb.ToDataplane]:
        """The set's whole membership as ``IPSetUpdate`` (plus ``IPSetDeltaUpdate``s adding the
        rest when it has more than ``chunk`` members), built once per flush for every node."""
        cached = self._full_cache.get(set_id)
        if cached is not None:
            return cached
        st = self.sets[set_id]
        members = list(st.members)
        out = [
            fb.ToDataplane(
                ipset_update=fb.IPSetUpdate(
                    id=set_id,
                    members=members[:chunk],
                    type=st.spec.type,  # type: ignore[arg-type]
                )
            )
        ]
        for i in range(chunk, len(members), chunk):
            out.append(
                fb.ToDataplane(
                    ipset_delta_update=fb.IPSetDeltaUpdate(
                        id=set_id, added_members=members[i : i + chunk]
                    )
                )
            )
        self._full_cache[set_id] = out
        return out

    @property
    def changed(self) -> set[str]:
        return self._changed

    def end_flush(self) -> None:
        for set_id in self._changed:
            st = self.sets.get(set_id)
            if st is not None:
                st.added = set()
                st.removed = set()
        self._changed = set()
        self._delta_cache = {}
        self._full_cache = {}
        for set_id in self._unneeded:
            st = self.sets.get(set_id)
            if st is None or st.refs > 0:
                continue
            del self.sets[set_id]
            if st.spec.selector is None:
                continue
            sel = st.spec.selector.unique_id
            users = self._by_selector.get(sel)
            if users is not None:
                users.discard(set_id)
                if not users:
                    del self._by_selector[sel]
                    self.index.remove_selector(sel)
        self._unneeded = set()
        for set_id in self._fresh:
            st = self.sets.get(set_id)
            if st is not None:
                st.fresh = False
        self._fresh = set()
