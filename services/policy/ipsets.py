"""IP sets, rendered two ways: ``ipset restore`` input and nftables named sets.

The calc graph names sets by ID (``s:…`` selectors, ``n:…`` named ports, ``svc:…``); each ID
becomes one kernel set per IP version (``cali40<id>`` / ``cali60<id>``) holding the members of
that family. The compiler also owns four sets of its own: ``masq-ipam-pools`` and
``all-ipam-pools`` (natOutgoing), ``all-hosts-net`` and ``all-vxlan-net`` (IPIP/VXLAN only from
known nodes).

ipset: a new set or a full rewrite (``IPSetUpdate``) fills a temporary set and swaps it in,
so rules never see a half-filled set; a delta is ``add``/``del`` lines; removed sets are
destroyed only after the rules that used them are gone, so they come back separately.

nftables: ``add set`` once, ``flush set`` + ``add element`` for a rewrite, ``add element`` /
``delete element`` for deltas, ``delete set`` at the end of the script. Interval sets reject
overlapping elements, so a NET set is written as its maximal CIDRs (a member inside another
member is implied by it) and deltas are computed on that form.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from libcalico.api.felix import felixbackend_pb2 as fb

from . import names
from .nftables.render import TABLE, family

MAXELEM = 1048576
NFT_CHUNK = 1000

IP = fb.IPSetUpdate.IP
IP_AND_PORT = fb.IPSetUpdate.IP_AND_PORT
NET = fb.IPSetUpdate.NET

IPSET_TYPE: dict[int, str] = {IP: "hash:ip", IP_AND_PORT: "hash:ip,port", NET: "hash:net"}


def member_version(member: str) -> int:
    return 6 if ":" in member.partition(",")[0] else 4


def for_version(members: Iterable[str], v: int) -> set[str]:
    return {m for m in members if member_version(m) == v}


def nft_type(set_type: int, v: int) -> str:
    addr = "ipv4_addr" if v == 4 else "ipv6_addr"
    if set_type == IP_AND_PORT:
        return f"{addr} . inet_proto . inet_service"
    if set_type == NET:
        return f"{addr}; flags interval"
    return addr


def nft_element(set_type: int, member: str) -> str:
    if set_type == IP_AND_PORT:
        addr, _, pp = member.partition(",")
        proto, _, port = pp.partition(":")
        return f"{addr} . {proto} . {port}"
    if set_type == IP:
        return member.removesuffix("/32").removesuffix("/128")
    return member


def maximal_nets(members: Iterable[str]) -> set[str]:
    """Members not contained in another member (what an nft interval set can hold)."""
    nets = sorted(
        (ipaddress.ip_network(m, strict=False) for m in members),
        key=lambda n: (int(n.network_address), n.prefixlen),
    )
    out: set[str] = set()
    last: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    for n in nets:
        if last is not None and n.subnet_of(last):  # type: ignore[arg-type]
            continue
        last = n
        out.add(str(n))
    return out


def _is_host(member: str) -> bool:
    return "/" not in member or member.endswith(("/32", "/128"))


@dataclass
class _Emitted:
    set_type: int
    members: set[str]
    nft: set[str]
    has_nets: bool = False


@dataclass
class SetOutput:
    """What one ``apply`` wants done to sets, in the order each tool must see it."""

    ipset: list[str] = field(default_factory=list)
    ipset_destroy: list[str] = field(default_factory=list)
    nft: list[str] = field(default_factory=list)
    nft_delete: list[str] = field(default_factory=list)
    temps: int = 0


class IPSetEmitter:
    """Tracks what the driver has been told about each kernel set, and writes changes."""

    def __init__(self) -> None:
        self._sets: dict[tuple[int, str], _Emitted] = {}

    def known(self, v: int, set_id: str) -> bool:
        return (v, set_id) in self._sets

    def _nft_elements(self, set_type: int, members: set[str]) -> tuple[set[str], bool]:
        if set_type == NET:
            has_nets = not all(_is_host(m) for m in members)
            if has_nets:
                return maximal_nets(members), True
        return {nft_element(set_type, m) for m in members}, False

    def rewrite(self, out: SetOutput, v: int, set_id: str, set_type: int,
                members: Iterable[str]) -> None:
        """Create the set if needed and make its content exactly ``members`` (this family)."""
        mine = for_version(members, v)
        name = names.ipset_name(v, set_id)
        inet = "inet" if v == 4 else "inet6"
        kind = IPSET_TYPE[set_type]
        temp = names.temp_ipset_name(v, out.temps)
        out.temps += 1
        opts = f"{kind} family {inet} maxelem {MAXELEM}"
        out.ipset.append(f"create {name} {opts} -exist")
        out.ipset.append(f"create {temp} {opts} -exist")
        out.ipset.append(f"flush {temp}")
        out.ipset.extend(f"add {temp} {m}" for m in sorted(mine))
        out.ipset.append(f"swap {temp} {name}")
        out.ipset.append(f"destroy {temp}")

        fam = family(v)
        nft_name = names.nft_set_name(name)
        prev = self._sets.get((v, set_id))
        if prev is None or prev.set_type != set_type:
            if prev is not None:
                out.nft.append(f"delete set {fam} {TABLE} {nft_name}")
            out.nft.append(f"add set {fam} {TABLE} {nft_name} {{ type {nft_type(set_type, v)}; }}")
        else:
            out.nft.append(f"flush set {fam} {TABLE} {nft_name}")
        elems, has_nets = self._nft_elements(set_type, mine)
        self._add_elements(out.nft, fam, nft_name, elems)
        self._sets[(v, set_id)] = _Emitted(set_type, mine, elems, has_nets)

    def delta(self, out: SetOutput, v: int, set_id: str, added: Iterable[str],
              removed: Iterable[str]) -> None:
        st = self._sets[(v, set_id)]
        name = names.ipset_name(v, set_id)
        add = for_version(added, v) - st.members
        rem = for_version(removed, v) & st.members
        if not add and not rem:
            return
        out.ipset.extend(f"del {name} {m} -exist" for m in sorted(rem))
        out.ipset.extend(f"add {name} {m} -exist" for m in sorted(add))
        st.members -= rem
        st.members |= add

        fam = family(v)
        nft_name = names.nft_set_name(name)
        if st.set_type == NET and (st.has_nets or not all(_is_host(m) for m in add)):
            new_elems, st.has_nets = self._nft_elements(st.set_type, st.members)
        else:
            new_elems = (st.nft - {nft_element(st.set_type, m) for m in rem}) | {
                nft_element(st.set_type, m) for m in add
            }
        gone = sorted(st.nft - new_elems)
        if gone:
            for i in range(0, len(gone), NFT_CHUNK):
                chunk = ", ".join(gone[i : i + NFT_CHUNK])
                out.nft.append(f"delete element {fam} {TABLE} {nft_name} {{ {chunk} }}")
        self._add_elements(out.nft, fam, nft_name, new_elems - st.nft)
        st.nft = new_elems

    def remove(self, out: SetOutput, v: int, set_id: str) -> None:
        if self._sets.pop((v, set_id), None) is None:
            return
        name = names.ipset_name(v, set_id)
        out.ipset_destroy.append(f"destroy {name}")
        out.nft_delete.append(f"delete set {family(v)} {TABLE} {names.nft_set_name(name)}")

    def full(self, out: SetOutput) -> None:
        """Every known set, written from scratch (for a driver's cold start or resync)."""
        state = dict(self._sets)
        self._sets.clear()
        for (v, set_id), st in sorted(state.items()):
            self.rewrite(out, v, set_id, st.set_type, st.members)

    @staticmethod
    def _add_elements(lines: list[str], fam: str, nft_name: str, elems: Iterable[str]) -> None:
        ordered = sorted(elems)
        for i in range(0, len(ordered), NFT_CHUNK):
            chunk = ", ".join(ordered[i : i + NFT_CHUNK])
            lines.append(f"add element {fam} {TABLE} {nft_name} {{ {chunk} }}")

    def members(self, v: int, set_id: str) -> tuple[int, set[str]] | None:
        st = self._sets.get((v, set_id))
        return None if st is None else (st.set_type, st.members)

    def state(self) -> dict[tuple[int, str], tuple[int, frozenset[str]]]:
        """(version, id) → (type, members): for tests and debugging."""
        return {k: (s.set_type, frozenset(s.members)) for k, s in self._sets.items()}


def sync_set(emitter: IPSetEmitter, out: SetOutput, v: int, set_id: str, set_type: int,
             members: set[str]) -> None:
    """Bring a compiler-owned set to ``members`` with the smallest change."""
    current = emitter.members(v, set_id)
    if current is None or current[0] != set_type:
        emitter.rewrite(out, v, set_id, set_type, members)
        return
    mine = for_version(members, v)
    emitter.delta(out, v, set_id, mine - current[1], set(current[1] - mine))
