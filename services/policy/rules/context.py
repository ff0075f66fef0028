"""What every chain builder needs to know besides its own input: marks, config, IP version."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from .. import names
from ..config import CompilerConfig
from ..generic import ACCEPT, DROP, RETURN, Action, deny_action
from ..marks import Marks, allocate


@lru_cache(maxsize=65536)
def _set_name(ip_version: int, set_id: str) -> str:
    return names.ipset_name(ip_version, set_id)


@dataclass(frozen=True)
class Context:
    config: CompilerConfig
    marks: Marks
    ip_version: int
    nft: bool = False
    table: str = "filter"

    @classmethod
    def make(cls, config: CompilerConfig, ip_version: int, nft: bool = False,
             table: str = "filter") -> Context:
        return cls(config, allocate(config.mark_mask), ip_version, nft, table)

    def for_table(self, table: str) -> Context:
        return self if table == self.table else replace(self, table=table)

    @property
    def deny(self) -> Action:
        """``IptablesFilterDenyAction``; REJECT only exists in the filter table."""
        if self.table != "filter":
            return DROP
        return deny_action(self.config.filter_deny_action)

    @property
    def filter_allow(self) -> Action:
        return RETURN if self.config.filter_allow_action == "RETURN" else ACCEPT

    @property
    def mangle_allow(self) -> Action:
        return RETURN if self.config.mangle_allow_action == "RETURN" else ACCEPT

    def set_name(self, set_id: str) -> str:
        return _set_name(self.ip_version, set_id)

    def wildcards(self) -> list[str]:
        return [p + "+" for p in self.config.interface_prefixes]
