"""Policy: the compiler in, the rule owners out.

Messages that shape rules or IP sets are queued as they arrive and compiled together at the
start of the next apply, so a burst of batches costs one compile (``PolicyCompiler.apply``
returns only what changed). The result feeds the owners of the chosen flavor:

- ``iptables``: changed/deleted chains per (IP version, table) into ``IptablesTable`` owners,
  the kernel-chain hooks from ``compiler.hooks()`` (re-read whenever config changed), the
  ``ipset restore`` text (creates, rewrites, deltas) and the destroys into the ``IPSetOwner``;
- ``nftables``: the ``nft -f`` script into the ``NftablesOwner``.

The other flavor's owners still exist with nothing desired, so after in-sync their sweep removes
what a previous run in the other mode left behind (``cali-`` chains and hooks, ``cali4*`` sets,
or the ``calico`` nft tables).

A new stream generation gets a fresh compiler and the owners forget their desired state (the
kernel shadows stay, so the next apply rewrites only what actually differs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from libcalico.api.felix import felixbackend_pb2 as fb
from services.policy.compiler import CompileResult, PolicyCompiler
from services.policy.config import CompilerConfig

from .owners.ipsets import IPSetOwner
from .owners.iptables import IptablesTable
from .owners.nftables import NftablesOwner

log = logging.getLogger(__name__)

IPTABLES = "iptables"
NFTABLES = "nftables"
FLAVORS = (IPTABLES, NFTABLES)
TABLES = ("raw", "mangle", "nat", "filter")

COMPILED = frozenset({
    "config_update", "encapsulation", "ipset_update", "ipset_delta_update", "ipset_remove",
    "active_policy_update", "active_policy_remove", "active_profile_update",
    "active_profile_remove", "workload_endpoint_update", "workload_endpoint_remove",
    "host_endpoint_update", "host_endpoint_remove", "ipam_pool_update", "ipam_pool_remove",
    "host_metadata_update", "host_metadata_remove",
})


@dataclass
class RuleOwners:
    """Every rule owner a driver has; both flavors' owners exist (see module doc)."""

    make_table: Callable[[int, str], IptablesTable]
    ipsets: IPSetOwner
    nft: NftablesOwner
    tables: dict[tuple[int, str], IptablesTable] = field(default_factory=dict)

    def table(self, v: int, name: str) -> IptablesTable:
        t = self.tables.get((v, name))
        if t is None:
            t = self.tables[(v, name)] = self.make_table(v, name)
        return t

    def ensure_all_tables(self, versions: tuple[int, ...]) -> None:
        for v in versions:
            for name in TABLES:
                self.table(v, name)


class PolicyManager:
    def __init__(self, flavor: str, owners: RuleOwners,
                 compiler_config: CompilerConfig | None = None) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown dataplane flavor {flavor!r}; expected one of {FLAVORS}")
        self.flavor = flavor
        self.owners = owners
        self._config = compiler_config or CompilerConfig()
        # Render only the flavor this driver programs (half the compile work).
        self._render = ("iptables",) if flavor == IPTABLES else ("nft",)
        self.compiler = PolicyCompiler(self._config, flavors=self._render)
        self._pending: list[fb.ToDataplane] = []
        self._hooks_stale = True
        self.last_result: CompileResult | None = None
        self.compiles = 0

    def on_message(self, msg: fb.ToDataplane, kind: str) -> None:
        self._pending.append(msg)
        if kind in ("config_update", "encapsulation"):
            self._hooks_stale = True

    @property
    def pending(self) -> int:
        return len(self._pending)

    def new_generation(self) -> None:
        self.compiler = PolicyCompiler(self._config, flavors=self._render)
        self._pending.clear()
        self._hooks_stale = True
        for t in self.owners.tables.values():
            t.reset_desired()
        self.owners.ipsets.reset_desired()
        self.owners.nft.reset_desired()

    def compile(self) -> CompileResult | None:
        """Fold queued messages into the compiler and its output into the owners."""
        if not self._pending and not self._hooks_stale:
            return None
        msgs, self._pending = self._pending, []
        result = self.compiler.apply(msgs)
        self.compiles += 1
        self.last_result = result
        self.owners.ensure_all_tables(self.compiler.versions)
        if self.flavor == IPTABLES:
            self._feed_iptables(result)
        else:
            self.owners.nft.load_script(result.nft_script)
        return result

    def _feed_iptables(self, result: CompileResult) -> None:
        for (v, table), delta in result.iptables.items():
            owner = self.owners.table(v, table)
            for name, lines in delta.chains.items():
                owner.set_chain(name, lines)
            for name in delta.deleted:
                owner.remove_chain(name)
        if self._hooks_stale:
            grouped: dict[tuple[int, str, str], tuple[list[str], list[str]]] = {}
            for h in self.compiler.hooks():
                ins, app = grouped.setdefault((h.ip_version, h.table, h.chain), ([], []))
                (ins if h.position == "insert" else app).append(h.rule)
            for (v, table, chain), (ins, app) in grouped.items():
                self.owners.table(v, table).set_hooks(chain, ins, app)
            self._hooks_stale = False
        if result.ipset_restore:
            self.owners.ipsets.load_restore_text(result.ipset_restore)
        if result.ipset_destroy:
            self.owners.ipsets.load_restore_text(result.ipset_destroy)
