"""Mark bits carved out of ``IptablesMarkMask``, lowest bit first, as Felix allocates them.

With the default mask 0xffff0000: accept 0x10000, pass 0x20000, drop 0x40000, scratch0
0x80000, scratch1 0x100000, and every remaining bit of the mask is the endpoint mark (used by
IPVS support; we only reserve it). Policy chains report their verdict through accept/pass;
deny rules set the drop bit before dropping so later stages can tell why; scratch0/1 combine
OR-ed match blocks (several CIDRs, >15 ports, named ports) inside one rendered rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from libcalico.errors import ValidationError

DEFAULT_MARK_MASK = 0xFFFF0000


@dataclass(frozen=True)
class Marks:
    accept: int
    pass_: int
    drop: int
    scratch0: int
    scratch1: int
    endpoint: int

    @property
    def all_calico(self) -> int:
        """Every bit the static chains clear before they start (endpoint bits excluded)."""
        return self.accept | self.pass_ | self.drop | self.scratch0 | self.scratch1


def allocate(mask: int = DEFAULT_MARK_MASK) -> Marks:
    bits = [1 << i for i in range(32) if mask & (1 << i)]
    if len(bits) < 5:
        raise ValidationError(
            f"IptablesMarkMask {mask:#x} has {len(bits)} bits; the policy compiler needs 5"
        )
    endpoint = 0
    for b in bits[5:]:
        endpoint |= b
    return Marks(bits[0], bits[1], bits[2], bits[3], bits[4], endpoint)
