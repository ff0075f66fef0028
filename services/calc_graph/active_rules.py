"""Active rules: which policies and profiles each subscribed node needs, and their IP sets.

``PolicyTable`` is cluster-wide. It holds every policy and profile, parses rules lazily (once per
version, shared by all nodes) and matches each policy's *own* selector against the label sets
that have an endpoint on a subscribed node (``SelectorIndex`` over "tracked" label sets; the
hint buckets keep this to candidates, never 10,000 policies x every endpoint). A namespaced
policy's selector already carries ``projectcalico.org/namespace == '<ns>'`` (rule scanner), so
it only matches endpoints in its namespace.

``ActiveRules`` is per node (Felix's ActiveRulesCalculator for one host). It counts, for every
policy, how many of the node's endpoints it matches and, for every profile, how many endpoints
name it; a count leaving zero activates the policy/profile on the node, which acquires the IP
sets its rules reference from the cluster-wide registry, and marks it for the node's event
sequencer. A profile named by an endpoint but missing from the datastore is active as a
deny-all stand-in, as in Felix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from libcalico.runtime.log import get_logger
from libcalico.selector import Selector

from .ipsets import IPSetRegistry, IPSetSpec
from .label_index import LabelSet, SelectorIndex
from .policy_resolver import PolicyKey, PolicyMeta, PolicySorter
from .records import EndpointRecord
from .rule_scanner import ParsedRules, RuleScanner, policy_order, policy_selector

if TYPE_CHECKING:
    from .event_sequencer import EventSequencer

log = get_logger(__name__)

RULE_FIELDS = ("ingress", "egress", "doNotTrack", "preDNAT", "performanceHints", "tier")


class PolicyRecord:
    __slots__ = ("key", "meta", "nodes", "parsed", "rules", "selector")

    def __init__(self, key: PolicyKey, spec: dict[str, Any], selector: Selector) -> None:
        self.key = key
        self.meta = PolicyMeta(key, spec, policy_order(spec))
        self.selector = selector
        self.rules = {f: spec.get(f) for f in RULE_FIELDS}
        self.parsed: ParsedRules | None = None
        self.nodes: set[str] = set()  # nodes where the policy is active


class PolicyTable:
    """Every policy and profile; policy selectors matched against tracked label sets."""

    def __init__(
        self,
        scanner: RuleScanner,
        sorter: PolicySorter,
        rules_by_node: dict[str, ActiveRules],
    ) -> None:
        self.scanner = scanner
        self.sorter = sorter
        self.policies: dict[PolicyKey, PolicyRecord] = {}
        self.profiles: dict[str, dict[str, Any]] = {}  # name -> {"ingress":..., "egress":...}
        self._profile_parsed: dict[str, ParsedRules] = {}
        self._profile_nodes: dict[str, set[str]] = {}
        self._nodes = rules_by_node
        self.index: SelectorIndex[PolicyKey] = SelectorIndex(self._started, self._stopped)

    # -- label-set listener: only tracked label sets are items of the index ----------------

    def on_label_set_added(self, ls: LabelSet) -> None:
        pass

    def on_label_set_changed(self, ls: LabelSet, old_labels: Mapping[str, str]) -> None:
        self.index.item_labels_changed(ls, old_labels)

    def on_label_set_removed(self, ls: LabelSet) -> None:
        self.index.remove_item(ls)

    # -- endpoints of subscribed nodes --------------------------------------------------------

    def track(self, node: str, ep: EndpointRecord) -> None:
        ls: LabelSet = ep.label_set
        tracked = ls in self.index
        ls.local.setdefault(node, set()).add(ep)
        if not tracked:
            self.index.add_item(ls)  # match starts count ep through ls.local
            return
        keys = self.index.item_sels.get(ls)
        if keys:
            self._nodes[node].endpoint_policies(keys, ep, 1)

    def untrack(self, node: str, ep: EndpointRecord) -> None:
        ls: LabelSet = ep.label_set
        keys = self.index.item_sels.get(ls)
        if keys:
            self._nodes[node].endpoint_policies(keys, ep, -1)
        eps = ls.local.get(node)
        if eps is not None:
            eps.discard(ep)
            if not eps:
                del ls.local[node]
        if not ls.local:
            self.index.remove_item(ls)

    def policies_of(self, ls: LabelSet) -> Iterable[PolicyMeta]:
        policies = self.policies
        return (policies[k].meta for k in self.index.item_sels.get(ls, ()))

    def _started(self, key: PolicyKey, ls: LabelSet) -> None:
        ls.cache = None
        for node, eps in ls.local.items():
            self._nodes[node].policy_refs(key, len(eps), eps)

    def _stopped(self, key: PolicyKey, ls: LabelSet) -> None:
        ls.cache = None
        for node, eps in ls.local.items():
            self._nodes[node].policy_refs(key, -len(eps), eps)

    # -- policies ----------------------------------------------------------------------------

    def on_policy(self, key: PolicyKey, value: dict[str, Any] | None) -> None:
        old = self.policies.get(key)
        if value is None:
            if old is not None:
                self.index.remove_selector(key)
                del self.policies[key]
                self.sorter.policy_changed()
            return
        kind, namespace, _ = key
        spec = value.get("spec") or {}
        selector = policy_selector(kind, namespace, spec)
        rec = PolicyRecord(key, spec, selector)
        if old is not None:
            rec.nodes = old.nodes
            if old.rules == rec.rules and old.selector == selector:
                rec.parsed = old.parsed
        self.policies[key] = rec
        if old is not None and not old.meta.same_ordering(rec.meta):
            self.sorter.policy_changed()
            for ls in self.index.sel_items.get(key, ()):
                ls.cache = None
                for node, eps in ls.local.items():
                    self._nodes[node].endpoints_dirty(eps)
        self.index.update_selector(key, selector)
        if old is not None and rec.parsed is None:
            for node in list(rec.nodes):
                self._nodes[node].rescan(("policy", key))

    def parsed_policy(self, key: PolicyKey) -> ParsedRules:
        rec = self.policies[key]
        if rec.parsed is None:
            kind, namespace, name = key
            try:
                rec.parsed = self.scanner.scan_policy(
                    kind, namespace, name, {**rec.rules}, str(rec.selector)
                )
            except Exception:
                # The datastore validates rules, so this is a bug or a foreign writer. Fail
                # closed: the policy stays in its tier with no rules (the tier's default
                # action applies) rather than taking the graph down mid-match.
                log.exception("cannot convert policy rules; applying it with none", policy=key)
                rules: dict[str, Any] = {**rec.rules, "ingress": [], "egress": []}
                rec.parsed = self.scanner.scan_policy(
                    kind, namespace, name, rules, str(rec.selector)
                )
        return rec.parsed

    # -- profiles ----------------------------------------------------------------------------

    def on_profile(self, name: str, value: dict[str, Any] | None) -> None:
        rules = None
        if value is not None:
            spec = value.get("spec") or {}
            rules = {"ingress": spec.get("ingress"), "egress": spec.get("egress")}
        if rules == self.profiles.get(name):
            return
        if rules is None:
            self.profiles.pop(name, None)
        else:
            self.profiles[name] = rules
        self._profile_parsed.pop(name, None)
        for node in list(self._profile_nodes.get(name, ())):
            self._nodes[node].rescan(("profile", name))

    def parsed_profile(self, name: str) -> ParsedRules:
        parsed = self._profile_parsed.get(name)
        if parsed is None:
            try:
                parsed = self.scanner.scan_profile(name, self.profiles.get(name))
            except Exception:
                log.exception("cannot convert profile rules; denying all", profile=name)
                parsed = self.scanner.scan_profile(name, None)
            self._profile_parsed[name] = parsed
        return parsed

    def profile_node(self, name: str, node: str, active: bool) -> None:
        nodes = self._profile_nodes.setdefault(name, set())
        if active:
            nodes.add(node)
        else:
            nodes.discard(node)
            if not nodes:
                del self._profile_nodes[name]
                if name not in self.profiles:
                    self._profile_parsed.pop(name, None)


Owner = tuple[str, Any]  # ("policy", PolicyKey) or ("profile", name)


class ActiveRules:
    """One node's active policies/profiles and the IP sets they hold."""

    def __init__(
        self,
        node: str,
        table: PolicyTable,
        ipsets: IPSetRegistry,
        sequencer: EventSequencer,
    ) -> None:
        self.node = node
        self._table = table
        self._ipsets = ipsets
        self._seq = sequencer
        self.policy_counts: dict[PolicyKey, int] = {}
        self.profile_counts: dict[str, int] = {}
        self.ipset_counts: dict[str, int] = {}
        self._held: dict[Owner, dict[str, IPSetSpec]] = {}

    def policy_refs(self, key: PolicyKey, delta: int, eps: Iterable[EndpointRecord]) -> None:
        self.endpoints_dirty(eps)
        count = self.policy_counts.get(key, 0) + delta
        if count > 0:
            self.policy_counts[key] = count
            if count == delta:
                self._activate(key)
        else:
            self.policy_counts.pop(key, None)
            self._deactivate(key)

    def endpoint_policies(self, keys: Iterable[PolicyKey], ep: EndpointRecord, delta: int) -> None:
        """One endpoint joins (+1) or leaves (-1) every policy in ``keys``."""
        self._seq.dirty_endpoints.add(ep.key)
        counts = self.policy_counts
        for key in keys:
            count = counts.get(key, 0) + delta
            if count > 0:
                counts[key] = count
                if count == 1 and delta == 1:
                    self._activate(key)
            else:
                del counts[key]
                self._deactivate(key)

    def _activate(self, key: PolicyKey) -> None:
        self._table.policies[key].nodes.add(self.node)
        self._hold(("policy", key), self._table.parsed_policy(key).ipsets)
        self._seq.dirty_policies.add(key)

    def _deactivate(self, key: PolicyKey) -> None:
        rec = self._table.policies.get(key)
        if rec is not None:
            rec.nodes.discard(self.node)
        self._hold(("policy", key), {})
        self._seq.dirty_policies.add(key)

    def profile_refs(self, names: Iterable[str], delta: int) -> None:
        for name in names:
            count = self.profile_counts.get(name, 0) + delta
            if count > 0:
                self.profile_counts[name] = count
                if count == delta:
                    self._table.profile_node(name, self.node, True)
                    self._hold(("profile", name), self._table.parsed_profile(name).ipsets)
                    self._seq.dirty_profiles.add(name)
            else:
                self.profile_counts.pop(name, None)
                self._table.profile_node(name, self.node, False)
                self._hold(("profile", name), {})
                self._seq.dirty_profiles.add(name)

    def endpoints_dirty(self, eps: Iterable[EndpointRecord]) -> None:
        dirty = self._seq.dirty_endpoints
        for ep in eps:
            dirty.add(ep.key)

    def rescan(self, owner: Owner) -> None:
        """Rules of an active policy/profile changed: re-hold its IP sets, resend it."""
        kind, key = owner
        if kind == "policy":
            if key in self.policy_counts:
                self._hold(owner, self._table.parsed_policy(key).ipsets)
                self._seq.dirty_policies.add(key)
        elif key in self.profile_counts:
            self._hold(owner, self._table.parsed_profile(key).ipsets)
            self._seq.dirty_profiles.add(key)

    def _hold(self, owner: Owner, specs: dict[str, IPSetSpec]) -> None:
        old = self._held.get(owner, {})
        counts = self.ipset_counts
        for set_id, spec in specs.items():
            if set_id not in old:
                n = counts.get(set_id, 0)
                counts[set_id] = n + 1
                if n == 0:
                    self._ipsets.acquire(spec)
                    self._seq.dirty_ipsets.add(set_id)
        for set_id in old:
            if set_id not in specs:
                n = counts[set_id] - 1
                if n:
                    counts[set_id] = n
                else:
                    del counts[set_id]
                    self._ipsets.release(set_id)
                    self._seq.dirty_ipsets.add(set_id)
        if specs:
            self._held[owner] = specs
        else:
            self._held.pop(owner, None)
