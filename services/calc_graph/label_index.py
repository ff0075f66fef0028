"""Label sets and selector matching through an index, never endpoint x selector.

Two ideas keep matching cheap at 250,000 endpoints and 10,000 policies:

1. **Label sets.** Endpoints with equal own labels and equal parents (profiles) share one
   ``LabelSet``: pods of a deployment differ only in name and address. Effective labels (own
   labels, then each parent's ``labelsToApply`` in order, first one wins) are computed once per
   label set, and every selector is evaluated once per label set, not once per endpoint. When a
   profile's labels change (a namespace relabelled), only the label sets that inherit from it are
   recomputed.

2. **Hint buckets on both sides.** A hint is a label every match must carry, with the allowed
   values or ``None`` for "any value". ``SelectorIndex`` buckets selectors by their hint and
   items by each of their labels, so a new item is evaluated only against selectors whose hint
   it satisfies (plus the few with no hint, such as ``all()``), and a new selector only against
   items that carry its hint label/value. Of a selector's required labels
   (``Selector.required_labels()``) the hint is the one fewest label sets carry right now
   (``LabelSetTable.hint_for``): for ``app == "web" && projectcalico.org/namespace == "ns1"``
   that is the namespace, one of a thousand, rather than the app, one of ten.

``SelectorIndex`` is used twice by the graph: once for IP-set selectors over every label set in
the cluster, once for policy selectors over the label sets that have endpoints on a subscribed
node. It reports match starts and stops; it owns no IP sets and no policies.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from libcalico.selector import NAMESPACE_LABEL, Selector

Hint = tuple[str, frozenset[str] | None] | None


class LabelSet:
    """Effective labels shared by every item with the same own labels and parents."""

    __slots__ = ("__weakref__", "cache", "items", "labels", "local", "own", "parents", "refs")

    def __init__(self, own: dict[str, str], parents: tuple[str, ...]) -> None:
        self.own = own
        self.parents = parents
        self.labels: dict[str, str] = own
        self.items: set[Any] = set()
        # node name -> endpoints of this label set on that node, for subscribed nodes only.
        self.local: dict[str, set[Any]] = {}
        self.refs = 0
        # Per-label-set memo for the policy resolver: (generation, result).
        self.cache: Any = None

    def __repr__(self) -> str:
        return f"LabelSet({self.labels!r})"


class LabelSetListener(Protocol):
    def on_label_set_added(self, ls: LabelSet) -> None: ...

    def on_label_set_changed(self, ls: LabelSet, old_labels: Mapping[str, str]) -> None: ...

    def on_label_set_removed(self, ls: LabelSet) -> None: ...


class LabelSetTable:
    """Interns label sets and applies profile label inheritance (Felix's InheritIndex)."""

    def __init__(self) -> None:
        self._sets: dict[tuple[frozenset[tuple[str, str]], tuple[str, ...]], LabelSet] = {}
        self._keys: dict[LabelSet, tuple[frozenset[tuple[str, str]], tuple[str, ...]]] = {}
        self._profile_labels: dict[str, dict[str, str]] = {}
        self._by_parent: dict[str, set[LabelSet]] = {}
        self.listeners: list[LabelSetListener] = []
        # How many label sets carry each label value (effective labels), for choosing hints.
        self._value_counts: dict[str, dict[str, int]] = {}
        self._key_counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sets)

    def __iter__(self) -> Any:
        return iter(self._sets.values())

    def acquire(self, own: dict[str, str], parents: tuple[str, ...]) -> LabelSet:
        key = (frozenset(own.items()), parents)
        ls = self._sets.get(key)
        if ls is None:
            ls = LabelSet(own, parents)
            ls.labels = self._effective(own, parents)
            self._count(ls.labels, 1)
            self._sets[key] = ls
            self._keys[ls] = key
            for p in parents:
                self._by_parent.setdefault(p, set()).add(ls)
            for listener in self.listeners:
                listener.on_label_set_added(ls)
        ls.refs += 1
        return ls

    def release(self, ls: LabelSet) -> None:
        ls.refs -= 1
        if ls.refs > 0:
            return
        for listener in self.listeners:
            listener.on_label_set_removed(ls)
        self._count(ls.labels, -1)
        key = self._keys.pop(ls)
        del self._sets[key]
        for p in ls.parents:
            users = self._by_parent.get(p)
            if users is not None:
                users.discard(ls)
                if not users:
                    del self._by_parent[p]

    def set_profile_labels(self, profile: str, labels: Mapping[str, str] | None) -> None:
        new = dict(labels) if labels else {}
        if self._profile_labels.get(profile, {}) == new:
            return
        if new:
            self._profile_labels[profile] = new
        else:
            self._profile_labels.pop(profile, None)
        for ls in list(self._by_parent.get(profile, ())):
            old = ls.labels
            effective = self._effective(ls.own, ls.parents)
            if effective == old:
                continue
            ls.labels = effective
            ls.cache = None
            self._count(old, -1)
            self._count(effective, 1)
            for listener in self.listeners:
                listener.on_label_set_changed(ls, old)

    def _count(self, labels: Mapping[str, str], delta: int) -> None:
        values = self._value_counts
        keys = self._key_counts
        for k, v in labels.items():
            by_val = values.get(k)
            if by_val is None:
                by_val = values[k] = {}
            n = by_val.get(v, 0) + delta
            if n:
                by_val[v] = n
            else:
                del by_val[v]
                if not by_val:
                    del values[k]
            n = keys.get(k, 0) + delta
            if n:
                keys[k] = n
            else:
                del keys[k]

    def hint_for(self, selector: Selector) -> Hint:
        """The required label of ``selector`` likely to match the fewest label sets.

        Ranked by: a value requirement before bare presence; then the label with the most
        distinct values (a predictor that holds while the cluster is still being listed:
        ``projectcalico.org/namespace`` has a value per namespace, ``app`` a few); then how
        many label sets match today; then the namespace label; then by name.
        """
        required = selector.required_labels()
        if not required:
            return None
        best: Hint = None
        best_rank: tuple[bool, int, int, bool, str] | None = None
        for k, vals in required.items():
            by_val = self._value_counts.get(k, {})
            if vals is None:
                cost = self._key_counts.get(k, 0)
            elif not vals:
                return (k, vals)  # matches nothing
            else:
                cost = sum(by_val.get(v, 0) for v in vals)
            rank = (vals is None, -len(by_val), cost, k != NAMESPACE_LABEL, k)
            if best_rank is None or rank < best_rank:
                best_rank = rank
                best = (k, vals)
        return best

    def _effective(self, own: dict[str, str], parents: tuple[str, ...]) -> dict[str, str]:
        merged = None
        for p in parents:
            inherited = self._profile_labels.get(p)
            if not inherited:
                continue
            if merged is None:
                merged = dict(own)
            for k, v in inherited.items():
                merged.setdefault(k, v)
        return own if merged is None else merged


S = TypeVar("S", bound=Hashable)


class SelectorIndex(Generic[S]):
    """Matches selectors (by id) against label sets, evaluating only hint-bucket candidates."""

    def __init__(
        self,
        on_match_started: Callable[[S, LabelSet], None],
        on_match_stopped: Callable[[S, LabelSet], None],
    ) -> None:
        self._started = on_match_started
        self._stopped = on_match_stopped
        self.hinter: Callable[[Selector], Hint] = lambda sel: sel.index_hint()
        self.selectors: dict[S, Selector] = {}
        self._hints: dict[S, Hint] = {}
        self._sel_has: dict[str, set[S]] = {}
        self._sel_val: dict[str, dict[str, set[S]]] = {}
        self._sel_unindexed: set[S] = set()
        self._items: set[LabelSet] = set()
        self._item_has: dict[str, set[LabelSet]] = {}
        self._item_val: dict[str, dict[str, set[LabelSet]]] = {}
        self.sel_items: dict[S, set[LabelSet]] = {}
        self.item_sels: dict[LabelSet, set[S]] = {}
        self.evaluations = 0  # for benchmarks and tests: how much work the hints saved

    # -- selectors ---------------------------------------------------------------------------

    def update_selector(self, sid: S, selector: Selector) -> None:
        old = self.selectors.get(sid)
        if old is not None and old.unique_id == selector.unique_id:
            return
        if old is not None:
            self._unbucket_selector(sid)
        self.selectors[sid] = selector
        hint = self.hinter(selector)
        self._hints[sid] = hint
        self._bucket_selector(sid, hint)
        matched: set[LabelSet] = set()
        candidates = self._item_candidates(hint)
        if candidates:  # compiling a matcher costs more than parsing: only when needed
            evaluate = selector.matcher
            for ls in candidates:
                self.evaluations += 1
                if evaluate(ls.labels):
                    matched.add(ls)
        previous = self.sel_items.get(sid, set())
        self.sel_items[sid] = matched
        for ls in previous - matched:
            self.item_sels[ls].discard(sid)
            self._stopped(sid, ls)
        for ls in matched - previous:
            self.item_sels[ls].add(sid)
            self._started(sid, ls)

    def rehint(self) -> int:
        """File every selector under its current best hint (statistics change as the cluster
        is listed); matches are unchanged. Returns how many moved."""
        moved = 0
        for sid, selector in self.selectors.items():
            hint = self.hinter(selector)
            if hint != self._hints[sid]:
                self._unbucket_selector(sid)
                self._hints[sid] = hint
                self._bucket_selector(sid, hint)
                moved += 1
        return moved

    def remove_selector(self, sid: S) -> None:
        if sid not in self.selectors:
            return
        self._unbucket_selector(sid)
        del self.selectors[sid]
        del self._hints[sid]
        for ls in self.sel_items.pop(sid, set()):
            self.item_sels[ls].discard(sid)
            self._stopped(sid, ls)

    def _bucket_selector(self, sid: S, hint: Hint) -> None:
        if hint is None:
            self._sel_unindexed.add(sid)
        elif hint[1] is None:
            self._sel_has.setdefault(hint[0], set()).add(sid)
        else:
            by_val = self._sel_val.setdefault(hint[0], {})
            for v in hint[1]:
                by_val.setdefault(v, set()).add(sid)

    def _unbucket_selector(self, sid: S) -> None:
        hint = self._hints.get(sid)
        if hint is None:
            self._sel_unindexed.discard(sid)
        elif hint[1] is None:
            _discard(self._sel_has, hint[0], sid)
        else:
            by_val = self._sel_val.get(hint[0])
            if by_val is not None:
                for v in hint[1]:
                    _discard(by_val, v, sid)
                if not by_val:
                    del self._sel_val[hint[0]]

    def _item_candidates(self, hint: Hint) -> Iterable[LabelSet]:
        if hint is None:
            return self._items
        key, values = hint
        if values is None:
            return self._item_has.get(key, ())
        by_val = self._item_val.get(key)
        if not by_val:
            return ()
        if len(values) == 1:
            return by_val.get(next(iter(values)), ())
        out: set[LabelSet] = set()
        for v in values:
            out.update(by_val.get(v, ()))
        return out

    # -- items -------------------------------------------------------------------------------

    def __contains__(self, ls: LabelSet) -> bool:
        return ls in self._items

    def add_item(self, ls: LabelSet) -> None:
        if ls in self._items:
            return
        self._items.add(ls)
        self._bucket_item(ls, ls.labels)
        matched = self._matching(ls.labels)
        self.item_sels[ls] = matched
        for sid in matched:
            self.sel_items[sid].add(ls)
            self._started(sid, ls)

    def item_labels_changed(self, ls: LabelSet, old_labels: Mapping[str, str]) -> None:
        if ls not in self._items:
            return
        self._unbucket_item(ls, old_labels)
        self._bucket_item(ls, ls.labels)
        matched = self._matching(ls.labels)
        previous = self.item_sels[ls]
        self.item_sels[ls] = matched
        for sid in previous - matched:
            self.sel_items[sid].discard(ls)
            self._stopped(sid, ls)
        for sid in matched - previous:
            self.sel_items[sid].add(ls)
            self._started(sid, ls)

    def remove_item(self, ls: LabelSet) -> None:
        if ls not in self._items:
            return
        self._items.discard(ls)
        self._unbucket_item(ls, ls.labels)
        for sid in self.item_sels.pop(ls, set()):
            self.sel_items[sid].discard(ls)
            self._stopped(sid, ls)

    def _matching(self, labels: Mapping[str, str]) -> set[S]:
        candidates = list(self._sel_unindexed)
        sel_has = self._sel_has
        sel_val = self._sel_val
        for k, v in labels.items():
            has = sel_has.get(k)
            if has:
                candidates.extend(has)
            by_val = sel_val.get(k)
            if by_val:
                hit = by_val.get(v)
                if hit:
                    candidates.extend(hit)
        self.evaluations += len(candidates)
        selectors = self.selectors
        return {sid for sid in candidates if selectors[sid].matcher(labels)}

    def _bucket_item(self, ls: LabelSet, labels: Mapping[str, str]) -> None:
        item_has = self._item_has
        item_val = self._item_val
        for k, v in labels.items():
            has = item_has.get(k)
            if has is None:
                item_has[k] = {ls}
                item_val[k] = {v: {ls}}
                continue
            has.add(ls)
            by_val = item_val[k]
            bucket = by_val.get(v)
            if bucket is None:
                by_val[v] = {ls}
            else:
                bucket.add(ls)

    def _unbucket_item(self, ls: LabelSet, labels: Mapping[str, str]) -> None:
        for k, v in labels.items():
            _discard(self._item_has, k, ls)
            by_val = self._item_val.get(k)
            if by_val is not None:
                _discard(by_val, v, ls)
                if not by_val:
                    del self._item_val[k]


def _discard(buckets: dict[Any, set[Any]], key: Any, member: Any) -> None:
    bucket = buckets.get(key)
    if bucket is not None:
        bucket.discard(member)
        if not bucket:
            del buckets[key]
