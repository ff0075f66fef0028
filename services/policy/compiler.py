"""``PolicyCompiler``: Felix's dataplane messages in, iptables / ipset / nftables text out.

The importable interface a dataplane driver uses directly, and the one the ``calico-policy``
gRPC service wraps. It is stateful and incremental: it remembers what it has already handed
out and every ``apply(messages)`` returns only what changed since, ready to pipe into the
tools::

    ToDataplane batch ──> PolicyModel.apply ──> Changes (keys touched, coalesced)
                                                   │
           ┌───────────────────────────────────────┘ one "group" per source object:
           v                                           static, policy, profile, wep, hep,
    rules/* chain builders (generic.Chain)             wl-dispatch, hep-dispatch, nft hooks
           │ per IP version and flavour (iptables, nftables), diffed chain by chain
           v
    iptables/render + nftables/render (cali:<hash> IDs)  +  ipsets.IPSetEmitter
           │
           v
    CompileResult: per (version, table) changed chains and deletions as
    ``iptables-restore --noflush`` input; ``ipset restore`` input (creates, rewrites, deltas)
    and a separate destroy list; one ``nft -f`` script for both families.

Changing one policy re-renders that policy's chains only; a new workload renders its
``cali-tw-``/``cali-fw-`` chains and the dispatch chains (nftables: two verdict-map
elements); an IP-set delta yields only ``add``/``del`` (``add element``/``delete element``)
lines. ``full()`` returns the whole desired state for a driver's cold start or resync, and
``hooks()`` the rules a driver inserts into the kernel chains.

Ordering contract for the driver (as Felix applies): ipset restore → iptables-restore per
table → ipset destroys. The nft script is already ordered (sets, chains, rules, map elements,
chain deletions, set deletions) and atomic.

``PolicyCompiler(config, flavors=("nft",))`` renders only what a driver programs; both
flavours by default. Not thread-safe: one compiler per driver (or per gRPC stream).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from libcalico.api.felix import felixbackend_pb2 as fb
from libcalico.errors import ValidationError
from libcalico.runtime.log import get_logger

from . import names
from .config import CompilerConfig
from .generic import Chain, Rule, referenced_chains
from .ipsets import NET, IPSetEmitter, SetOutput, sync_set
from .iptables import render as ipt
from .model import Changes, PolicyKey, PolicyModel, WepKey
from .nftables import render as nft
from .rules import dispatch, endpoints, nat, policy, static
from .rules.context import Context

log = get_logger(__name__)

TABLES = ("raw", "mangle", "nat", "filter")
IPTABLES, NFT = "iptables", "nft"
FLAVORS = (IPTABLES, NFT)

GroupKey = tuple[str, ...]
TableKey = tuple[int, str]


@dataclass(frozen=True)
class TableDelta:
    """Changed chains (full new content) and deleted chains of one table and IP version."""

    ip_version: int
    table: str
    chains: dict[str, tuple[str, ...]]
    deleted: tuple[str, ...] = ()

    def restore_input(self) -> str:
        """``iptables-restore --noflush`` input for this table ("" when nothing changed)."""
        if not self.chains and not self.deleted:
            return ""
        lines = [f"*{self.table}"]
        touched = [*self.chains, *self.deleted]
        lines += [f":{name} - [0:0]" for name in touched]
        lines += [f"-F {name}" for name in touched]
        for rules in self.chains.values():
            lines.extend(rules)
        lines += [f"-X {name}" for name in self.deleted]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class KernelHook:
    """A rule the driver places in a kernel chain (``-I FORWARD 1 … -j cali-FORWARD``)."""

    ip_version: int
    table: str
    chain: str
    position: str  # "insert" (at the top, in order) or "append"
    rule: str  # the full iptables line, with its cali: ID


@dataclass
class CompileResult:
    iptables: dict[TableKey, TableDelta] = field(default_factory=dict)
    ipset_restore: str = ""
    ipset_destroy: str = ""
    nft_script: str = ""
    full: bool = False
    warnings: list[str] = field(default_factory=list)

    def restore_input(self, ip_version: int) -> str:
        """All changed tables of one IP version, in raw, mangle, nat, filter order."""
        parts = [
            self.iptables[(ip_version, t)].restore_input()
            for t in TABLES if (ip_version, t) in self.iptables
        ]
        return "".join(parts)

    def changed_chains(self, ip_version: int = 4, table: str = "filter") -> set[str]:
        d = self.iptables.get((ip_version, table))
        return set(d.chains) if d else set()

    def deleted_chains(self, ip_version: int = 4, table: str = "filter") -> set[str]:
        d = self.iptables.get((ip_version, table))
        return set(d.deleted) if d else set()

    @property
    def empty(self) -> bool:
        return not (self.iptables or self.ipset_restore or self.ipset_destroy or self.nft_script)


class PolicyCompiler:
    def __init__(self, config: CompilerConfig | None = None, *,
                 flavors: Iterable[str] = FLAVORS) -> None:
        """``flavors``: which renderings to produce ("iptables", "nft"); a driver that only
        programs one of them halves the rendering work by asking for just that one."""
        self.flavors = tuple(f for f in FLAVORS if f in set(flavors))
        if not self.flavors:
            raise ValidationError(f"flavors: none of {list(flavors)} is one of {FLAVORS}")
        self.model = PolicyModel(config or CompilerConfig())
        self._sets = IPSetEmitter()
        # flavour → (version, table) → chain name → Chain: what the driver has been given.
        self._chains: dict[str, dict[TableKey, dict[str, Chain]]] = {f: {} for f in FLAVORS}
        # flavour → (version, table, target chain) → rules jumping/going to it.
        self._refs: dict[str, dict[tuple[int, str, str], int]] = {f: {} for f in FLAVORS}
        # (flavour, version, group) → {(table, chain name): Chain}
        self._groups: dict[tuple[str, int, GroupKey], dict[tuple[str, str], Chain]] = {}
        # Rendered text per chain: (version, table, name) → lines.
        self._ipt_text: dict[tuple[int, str, str], tuple[str, ...]] = {}
        self._nft_text: dict[tuple[int, str, str], tuple[str, ...]] = {}
        self._vmaps: dict[int, dict[str, dict[str, str]]] = {}
        self._started = False
        self._hep_mangle = False
        self._ctx: dict[tuple[int, bool], Context] = {}

    # -- public API ----------------------------------------------------------------------

    @property
    def config(self) -> CompilerConfig:
        return self.model.config

    @property
    def versions(self) -> tuple[int, ...]:
        return (4, 6) if self.model.config.ipv6_support else (4,)

    def apply(self, messages: Iterable[fb.ToDataplane]) -> CompileResult:
        """Fold a batch of messages in and return what changed since the previous call."""
        with _gc_paused():
            return self._apply(messages)

    def _apply(self, messages: Iterable[fb.ToDataplane]) -> CompileResult:
        ch = Changes()
        for m in messages:
            self.model.apply(m, ch)
        first = not self._started
        self._started = True
        if ch.config or first:
            self._ctx.clear()
        groups = self._dirty_groups(ch, rebuild_all=ch.config or first)
        run = _Run()
        for gkey in groups:
            self._rebuild_group(gkey, run)
        sets = SetOutput()
        self._apply_sets(ch, sets, all_owned=ch.config or first or ch.static)
        vmap_lines = self._sync_vmaps(run, bool(ch.weps) or ch.config or first)
        return self._result(run, sets, vmap_lines, bootstrap=first)

    def full(self) -> CompileResult:
        """The whole desired state: every chain, every set, a from-scratch nft script."""
        with _gc_paused():
            return self._full()

    def _full(self) -> CompileResult:
        run = _Run()
        for flavor in self.flavors:
            for (v, table), chains in self._chains[flavor].items():
                for name in chains:
                    run.changed[flavor].add((v, table, name))
        sets = SetOutput()
        self._sets.full(sets)
        result = CompileResult(full=True)
        for (v, table, name) in sorted(run.changed[IPTABLES]):
            self._ipt_table(result, v, table).chains[name] = self._ipt_text[(v, table, name)]
        if IPTABLES in self.flavors:
            result.ipset_restore = _join(sets.ipset)
        if NFT not in self.flavors:
            return result
        lines: list[str] = []
        for v in self.versions:
            fam = nft.family(v)
            lines += [f"add table {fam} {nft.TABLE}", f"delete table {fam} {nft.TABLE}",
                      f"add table {fam} {nft.TABLE}"]
        lines += sets.nft
        lines += self._nft_map_decls()
        keys = sorted(run.changed[NFT])
        lines += [self._nft_chain_decl(v, t, n) for v, t, n in keys]
        for key in keys:
            lines.extend(self._nft_text[key])
        for v, maps in sorted(self._vmaps.items()):
            for mname, elems in sorted(maps.items()):
                lines += _vmap_element_lines(v, mname, elems, add=True)
        result.nft_script = _join(lines)
        return result

    def hooks(self) -> list[KernelHook]:
        """The rules to insert into (and append to) the kernel chains, per IP version."""
        out: list[KernelHook] = []
        if IPTABLES not in self.flavors:
            return out  # nftables hooks are the base chains in the script itself
        for v in self.versions:
            ctx = self._context(v, False)
            by_chain: dict[tuple[str, str, str], list[Rule]] = {}
            for table, chain, position, rule in static.hook_rules(ctx):
                by_chain.setdefault((table, chain, position), []).append(rule)
            for (table, chain, position), rules in by_chain.items():
                rendered = ipt.render_hooks(chain, rules, insert=position == "insert",
                                            masq_fully_random=self.config.masq_fully_random)
                out += [KernelHook(v, table, chain, position, line) for line in rendered]
        return out

    def rendered(self, ip_version: int = 4, table: str = "filter",
                 flavor: str = IPTABLES) -> dict[str, tuple[str, ...]]:
        """Current rendered text per chain (iptables ``-A`` lines or nft ``add rule`` lines)."""
        cache = self._ipt_text if flavor == IPTABLES else self._nft_text
        return {name: lines for (v, t, name), lines in cache.items()
                if v == ip_version and t == table}

    def ipset_state(self) -> dict[tuple[int, str], tuple[int, frozenset[str]]]:
        """(IP version, set ID) → (type, members) as handed out so far."""
        return self._sets.state()

    def chains(self, ip_version: int = 4, table: str = "filter",
               flavor: str = IPTABLES) -> dict[str, Chain]:
        """The desired chains of one table, for tests and debugging."""
        return dict(self._chains[flavor].get((ip_version, table), {}))

    # -- groups --------------------------------------------------------------------------

    def _dirty_groups(self, ch: Changes, rebuild_all: bool) -> list[GroupKey]:
        m = self.model
        hep_mangle = bool(m.heps)
        if rebuild_all or hep_mangle != self._hep_mangle:
            self._hep_mangle = hep_mangle
            return [
                ("static",), ("hooks",), ("wl-dispatch",), ("hep-dispatch",),
                *(("policy", *k) for k in sorted(m.policies)),
                *(("profile", n) for n in sorted(m.profiles)),
                *(("wep", *k) for k in sorted(m.weps)),
                *(("hep", k) for k in sorted(m.heps)),
                # Removed objects whose groups still exist must be cleared too.
                *(("policy", *k) for k in sorted(ch.policies - m.policies.keys())),
                *(("profile", n) for n in sorted(ch.profiles - m.profiles.keys())),
                *(("wep", *k) for k in sorted(ch.weps - m.weps.keys())),
                *(("hep", k) for k in sorted(ch.heps - m.heps.keys())),
            ]
        groups: list[GroupKey] = []
        if ch.static or ch.weps:
            groups.append(("static",))
        groups += [("policy", *k) for k in sorted(ch.policies)]
        groups += [("profile", n) for n in sorted(ch.profiles)]
        groups += [("wep", *k) for k in sorted(ch.weps)]
        groups += [("hep", k) for k in sorted(ch.heps)]
        if ch.weps:
            groups.append(("wl-dispatch",))
        if ch.heps:
            groups.append(("hep-dispatch",))
        return groups

    def _context(self, v: int, nft_flavor: bool) -> Context:
        key = (v, nft_flavor)
        ctx = self._ctx.get(key)
        if ctx is None:
            ctx = self._ctx[key] = Context.make(self.model.config, v, nft_flavor)
        return ctx

    def _rebuild_group(self, gkey: GroupKey, run: _Run) -> None:
        for v in self.versions:
            if gkey[0] in ("wl-dispatch", "hep-dispatch", "hooks"):
                for flavor in self.flavors:
                    built = self._build(gkey, self._context(v, flavor == NFT))
                    self._set_group(flavor, v, gkey, built, run)
            else:
                built = self._build(gkey, self._context(v, False))
                for flavor in self.flavors:
                    self._set_group(flavor, v, gkey, built, run)

    def _build(self, gkey: GroupKey, ctx: Context) -> dict[tuple[str, str], Chain]:
        m = self.model
        out: dict[tuple[str, str], Chain] = {}

        def put(table: str, chains: Iterable[Chain]) -> None:
            for c in chains:
                out[(table, c.name)] = c

        kind = gkey[0]
        v = ctx.ip_version
        raw, mangle = ctx.for_table("raw"), ctx.for_table("mangle")
        # REJECT only exists in filter: other tables get chains built with DROP, which are
        # the same chains whenever the deny action is DROP anyway.
        same_deny = raw.deny == ctx.deny
        if kind == "static":
            put("filter", static.filter_chains(ctx))
            put("raw", static.raw_chains(raw, m.rpf_skip()))
            put("mangle", static.mangle_chains(mangle))
            put("nat", nat.nat_chains(ctx.for_table("nat"),
                                      bool(m.pool_cidrs(v, masquerade_only=True)),
                                      m.floating_ips(v)))
        elif kind == "hooks":
            if ctx.nft:
                by_chain: dict[tuple[str, str], list[Rule]] = {}
                for table, chain, _pos, rule in static.hook_rules(ctx):
                    by_chain.setdefault((table, chain), []).append(rule)
                for (table, chain), rules in by_chain.items():
                    out[(table, chain)] = Chain(chain, tuple(rules))
        elif kind == "policy":
            key: PolicyKey = (gkey[1], gkey[2], gkey[3])
            pol = m.policies.get(key)
            if pol is not None:
                if pol.untracked:
                    put("raw", policy.policy_chains(*key, pol, raw))
                elif pol.pre_dnat:
                    put("mangle", policy.policy_chains(*key, pol, mangle))
                else:
                    chains = policy.policy_chains(*key, pol, ctx)
                    put("filter", chains)
                    if self._hep_mangle:
                        put("mangle", chains if same_deny
                            else policy.policy_chains(*key, pol, mangle))
        elif kind == "profile":
            prof = m.profiles.get(gkey[1])
            if prof is not None:
                chains = policy.profile_chains(gkey[1], prof, ctx)
                put("filter", chains)
                if self._hep_mangle:
                    put("mangle", chains if same_deny
                        else policy.profile_chains(gkey[1], prof, mangle))
        elif kind == "wep":
            wkey: WepKey = (gkey[1], gkey[2], gkey[3])
            ep = m.weps.get(wkey)
            if ep is not None and ep.name:
                put("filter", endpoints.workload_chains(ctx, ep))
        elif kind == "hep":
            hep = m.heps.get(gkey[1])
            iface = _hep_iface(hep)
            if hep is not None and iface:
                put("filter", endpoints.host_filter_chains(ctx, iface, hep))
                if hep.untracked_tiers:
                    put("raw", endpoints.host_raw_chains(raw, iface, hep))
                put("mangle", endpoints.host_mangle_chains(mangle, iface, hep))
        elif kind == "wl-dispatch":
            put("filter", dispatch.workload_dispatch(ctx, self._wl_ifaces()))
        elif kind == "hep-dispatch":
            self._build_hep_dispatch(ctx, put)
        return out

    def _wl_ifaces(self) -> list[str]:
        return sorted({ep.name for ep in self.model.weps.values() if ep.name})

    def _build_hep_dispatch(self, ctx: Context, put: object) -> None:
        assert callable(put)
        heps = [(i, h) for h in self.model.heps.values() if (i := _hep_iface(h))]
        all_if = [i for i, _ in heps]
        default = names.ALL_INTERFACES if names.ALL_INTERFACES in all_if else ""
        untracked = [i for i, h in heps if h.untracked_tiers]
        pre_dnat = [i for i, h in heps if h.pre_dnat_tiers]
        put("filter", dispatch.host_dispatch(
            ctx, all_if, default, from_chain=names.FROM_HOST_ENDPOINT,
            to_chain=names.TO_HOST_ENDPOINT, from_pfx=names.HOST_FROM_PFX,
            to_pfx=names.HOST_TO_PFX, skip_workloads=False))
        put("filter", dispatch.host_dispatch(
            ctx, all_if, default, from_chain=names.FROM_HEP_FORWARD,
            to_chain=names.TO_HEP_FORWARD, from_pfx=names.HOST_FROM_FWD_PFX,
            to_pfx=names.HOST_TO_FWD_PFX, skip_workloads=False))
        put("raw", dispatch.host_dispatch(
            ctx.for_table("raw"), untracked, default if default in untracked else "",
            from_chain=names.FROM_HOST_ENDPOINT, to_chain=names.TO_HOST_ENDPOINT,
            from_pfx=names.HOST_FROM_PFX, to_pfx=names.HOST_TO_PFX, skip_workloads=True))
        put("mangle", dispatch.host_dispatch(
            ctx.for_table("mangle"), pre_dnat, default if default in pre_dnat else "",
            from_chain=names.FROM_HOST_ENDPOINT, to_chain="", from_pfx=names.HOST_FROM_PFX,
            to_pfx=names.HOST_TO_PFX, skip_workloads=True))
        put("mangle", dispatch.host_dispatch(
            ctx.for_table("mangle"), all_if, default, from_chain="",
            to_chain=names.TO_HOST_ENDPOINT, from_pfx=names.HOST_FROM_PFX,
            to_pfx=names.HOST_TO_PFX, skip_workloads=True))

    def _set_group(self, flavor: str, v: int, gkey: GroupKey,
                   new: dict[tuple[str, str], Chain], run: _Run) -> None:
        gid = (flavor, v, gkey)
        old = self._groups.get(gid, {})
        tables = self._chains[flavor]
        changed, deleted = run.changed[flavor], run.deleted[flavor]
        refs = self._refs[flavor]
        for table, name in old.keys() - new.keys():
            gone = tables.get((v, table), {}).pop(name, None)
            if gone is not None:
                _count_refs(refs, v, table, gone, -1)
            changed.discard((v, table, name))
            deleted.add((v, table, name))
        for (table, name), chain in new.items():
            t = tables.setdefault((v, table), {})
            prev = t.get(name)
            if prev != chain:
                if prev is not None:
                    _count_refs(refs, v, table, prev, -1)
                _count_refs(refs, v, table, chain, +1)
                t[name] = chain
                changed.add((v, table, name))
            deleted.discard((v, table, name))
        if new:
            self._groups[gid] = new
        else:
            self._groups.pop(gid, None)

    # -- IP sets ---------------------------------------------------------------------------

    def _apply_sets(self, ch: Changes, out: SetOutput, all_owned: bool) -> None:
        m = self.model
        for v in self.versions:
            for set_id in sorted(ch.ipsets_full):
                s = m.ipsets.get(set_id)
                if s is not None:
                    self._sets.rewrite(out, v, set_id, s.set_type, s.members)
            for set_id, (added, removed) in sorted(ch.ipsets_delta.items()):
                if self._sets.known(v, set_id):
                    self._sets.delta(out, v, set_id, added, removed)
                elif set_id in m.ipsets:
                    s = m.ipsets[set_id]
                    self._sets.rewrite(out, v, set_id, s.set_type, s.members)
            if all_owned:
                owned = {
                    names.IPSET_MASQ_POOLS: m.pool_cidrs(v, masquerade_only=True),
                    names.IPSET_ALL_POOLS: m.pool_cidrs(v),
                    names.IPSET_ALL_HOSTS: m.host_addrs(v),
                    names.IPSET_ALL_VXLAN: m.host_addrs(v),
                }
                for set_id, members in owned.items():
                    sync_set(self._sets, out, v, set_id, NET, members)
        for v in self.versions:
            for set_id in sorted(ch.ipsets_removed):
                self._sets.remove(out, v, set_id)

    # -- nftables verdict maps -------------------------------------------------------------

    def _sync_vmaps(self, run: _Run, dirty: bool) -> list[str]:
        """Element changes for the workload dispatch maps (deletions go to ``run``)."""
        lines: list[str] = []
        if not dirty or NFT not in self.flavors:
            return lines
        desired = dispatch.workload_vmaps(self._wl_ifaces())
        for v in self.versions:
            current = self._vmaps.setdefault(v, {})
            for mname, elems in desired.items():
                cur = current.get(mname, {})
                gone = {k: t for k, t in cur.items() if elems.get(k) != t}
                new = {k: t for k, t in elems.items() if cur.get(k) != t}
                if gone:
                    run.vmap_deletes += _vmap_element_lines(v, mname, gone, add=False)
                if new:
                    lines += _vmap_element_lines(v, mname, new, add=True)
                current[mname] = dict(elems)
        return lines

    def _nft_map_decls(self) -> list[str]:
        out = []
        for v in self.versions:
            for mname in (names.FROM_WL_VMAP, names.TO_WL_VMAP):
                out.append(f"add map {nft.family(v)} {nft.TABLE} {nft.layered('filter', mname)}"
                           " { type ifname : verdict; }")
        return out

    # -- output ----------------------------------------------------------------------------

    def _check_references(self, run: _Run, result: CompileResult) -> None:
        """Warn about what would make a restore fail: a jump to a chain nobody renders, or
        deleting a chain something still jumps to. The calc graph's flush order (policies
        before the endpoints that use them, removals in reverse) never causes either."""
        flavor = self.flavors[0]
        tables = self._chains[flavor]
        refs = self._refs[flavor]
        for v, table, name in sorted(run.changed[flavor]):
            for target in referenced_chains(tables[(v, table)][name]):
                if target not in tables[(v, table)]:
                    result.warnings.append(
                        f"IPv{v} {table} chain {name} refers to missing chain {target}")
        for v, table, name in sorted(run.deleted[flavor]):
            if refs.get((v, table, name), 0) > 0:
                result.warnings.append(
                    f"IPv{v} {table} chain {name} is deleted but still referenced "
                    f"by {refs[(v, table, name)]} rule(s)")

    def _ipt_table(self, result: CompileResult, v: int, table: str) -> TableDelta:
        key = (v, table)
        if key not in result.iptables:
            result.iptables[key] = TableDelta(v, table, {})
        return result.iptables[key]

    def _nft_chain_decl(self, v: int, table: str, name: str) -> str:
        full = nft.layered(table, name)
        if full in nft.BASE_CHAINS:
            return nft.base_chain_decl(v, full)
        return f"add chain {nft.family(v)} {nft.TABLE} {full}"

    def _result(self, run: _Run, sets: SetOutput, vmap_lines: list[str],
                bootstrap: bool) -> CompileResult:
        cfg = self.model.config
        result = CompileResult()
        lines: list[str] = []
        self._check_references(run, result)
        # iptables
        for key in sorted(run.changed[IPTABLES]):
            v, table, name = key
            chain = self._chains[IPTABLES][(v, table)][name]
            rendered = ipt.render_chain(chain, cfg.masq_fully_random)
            self._ipt_text[key] = rendered
            self._ipt_table(result, v, table).chains[name] = rendered
        for key in sorted(run.deleted[IPTABLES]):
            v, table, name = key
            self._ipt_text.pop(key, None)
            d = self._ipt_table(result, v, table)
            result.iptables[(v, table)] = TableDelta(v, table, d.chains, (*d.deleted, name))
        if IPTABLES in self.flavors:
            result.ipset_restore = _join(sets.ipset)
            result.ipset_destroy = _join(sets.ipset_destroy)
        if NFT not in self.flavors:
            return _logged(result)
        # nftables
        if bootstrap:
            lines += [f"add table {nft.family(v)} {nft.TABLE}" for v in self.versions]
            lines += self._nft_map_decls()
        lines += sets.nft
        changed = sorted(run.changed[NFT])
        for v, table, name in changed:
            chain = self._chains[NFT][(v, table)][name]
            self._nft_text[(v, table, name)] = nft.render_chain(
                chain, v, table, cfg.masq_fully_random)
            lines.append(self._nft_chain_decl(v, table, name))
        for v, table, name in changed:
            lines.append(f"flush chain {nft.family(v)} {nft.TABLE} {nft.layered(table, name)}")
            lines.extend(self._nft_text[(v, table, name)])
        lines += vmap_lines
        lines += run.vmap_deletes
        deleted = sorted(run.deleted[NFT])
        for v, table, name in deleted:
            self._nft_text.pop((v, table, name), None)
            lines.append(f"flush chain {nft.family(v)} {nft.TABLE} {nft.layered(table, name)}")
        for v, table, name in deleted:
            lines.append(f"delete chain {nft.family(v)} {nft.TABLE} {nft.layered(table, name)}")
        lines += sets.nft_delete
        result.nft_script = _join(lines)
        return _logged(result)


@dataclass
class _Run:
    """Bookkeeping for one apply()."""

    changed: dict[str, set[tuple[int, str, str]]] = field(
        default_factory=lambda: {f: set() for f in FLAVORS})
    deleted: dict[str, set[tuple[int, str, str]]] = field(
        default_factory=lambda: {f: set() for f in FLAVORS})
    vmap_deletes: list[str] = field(default_factory=list)


def _hep_iface(hep: fb.HostEndpoint | None) -> str:
    if hep is None:
        return ""
    if hep.name == "*":
        return names.ALL_INTERFACES
    return hep.name


def _vmap_element_lines(v: int, mname: str, elems: dict[str, str], add: bool) -> list[str]:
    if not elems:
        return []
    fam = nft.family(v)
    full = nft.layered("filter", mname)
    if add:
        body = ", ".join(f'"{k}" : goto {nft.layered("filter", t)}'
                         for k, t in sorted(elems.items()))
        return [f"add element {fam} {nft.TABLE} {full} {{ {body} }}"]
    body = ", ".join(f'"{k}"' for k in sorted(elems))
    return [f"delete element {fam} {nft.TABLE} {full} {{ {body} }}"]


def _count_refs(refs: dict[tuple[int, str, str], int], v: int, table: str, chain: Chain,
                delta: int) -> None:
    for target in referenced_chains(chain):
        key = (v, table, target)
        n = refs.get(key, 0) + delta
        if n:
            refs[key] = n
        else:
            refs.pop(key, None)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while compiling a batch.

    A cold compile allocates millions of tuples and strings, none of them in reference cycles;
    the collector's generation-0 passes over them are pure overhead (~25% of a 100k-rule
    compile). Collection resumes, with whatever was pending, as soon as the batch is done.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _logged(result: CompileResult) -> CompileResult:
    for w in result.warnings:
        log.warning("policy compiler finding", detail=w)
    return result


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""
