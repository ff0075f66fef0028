"""The nftables owner: table ``calico`` in the ``ip`` and ``ip6`` families, written with ``nft -f``.

The compiler's script is already a minimal, ordered, atomic delta (sets, chains, rules, verdict
map elements, deletions), so ``load_script()`` queues it verbatim for the next ``apply()`` and
also folds it into a model of the whole desired table: chain declarations and their rules (with
``cali:`` IDs), set and map declarations and their elements. The model is what makes repair
possible without the compiler's help.

Read-back (``nft list table <family> calico``) parses chain names, each rule's ``cali:`` ID,
set/map names and element counts. A missing or different chain is rewritten (``add chain`` +
``flush chain`` + its rules), a missing set or one with the wrong element count is refilled, in
one atomic ``nft -f``. Because the whole table is ours, chains and sets in it that the model
does not know are deleted, but only when deletes are allowed (after in-sync). A failed
incremental script marks the owner for read-back, and the repair writes the model.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

from ..commands import KernelError, Runner

log = logging.getLogger(__name__)

TABLE = "calico"
NFT = "nft"
_HASH_RE = re.compile(r'comment "cali:([A-Za-z0-9_-]{16})')
_OBJ = {"chain", "set", "map"}


@dataclass
class _ChainModel:
    decl: str
    rules: list[str] = field(default_factory=list)

    @property
    def hashes(self) -> tuple[str | None, ...]:
        return tuple(_hash(r) for r in self.rules)


@dataclass
class _SetModel:
    kind: str  # set | map
    decl: str
    # key → element text; a map element's key is the part before " : " (deletes name keys).
    elements: dict[str, str] = field(default_factory=dict)


@dataclass
class KernelTable:
    chains: dict[str, list[str | None]] = field(default_factory=dict)
    sets: dict[str, int] = field(default_factory=dict)  # name → element count
    kinds: dict[str, str] = field(default_factory=dict)  # set name → "set" | "map"


@dataclass
class NftStats:
    scripts: int = 0
    script_lines: int = 0
    last_script: str = ""
    readbacks: int = 0
    chains_repaired: int = 0
    sets_repaired: int = 0
    deleted: int = 0


def _hash(rule_line: str) -> str | None:
    m = _HASH_RE.search(rule_line)
    return m.group(1) if m else None


def _elements(line: str) -> list[str]:
    body = line[line.index("{") + 1: line.rindex("}")]
    return [e.strip() for e in body.split(",") if e.strip()]


def _braced(decl: str) -> str:
    """What is inside ``{ … }`` of an ``add chain/set/map`` statement ("" when none)."""
    if "{" not in decl:
        return ""
    return decl[decl.index("{") + 1: decl.rindex("}")].strip()


def _key(element: str) -> str:
    return element.split(" : ", 1)[0].strip()


def parse_list(text: str) -> KernelTable:
    """``nft list table``: chain names with each rule's ``cali:`` ID; sets with element counts."""
    out = KernelTable()
    chain: str | None = None
    current_set: str | None = None
    in_elements = False
    for raw in text.splitlines():
        line = raw.strip()
        if in_elements and current_set is not None:
            out.sets[current_set] += len([e for e in line.rstrip("}").split(",") if e.strip()])
            if line.endswith("}"):
                in_elements = False
            continue
        if line.startswith("chain ") and line.endswith("{"):
            chain = line.split()[1]
            out.chains[chain] = []
            current_set = None
        elif line.startswith(("set ", "map ")) and line.endswith("{"):
            kind, current_set = line.split()[:2]
            out.sets[current_set] = 0
            out.kinds[current_set] = kind
            chain = None
        elif line == "}":
            chain = None
            current_set = None
        elif current_set is not None and line.startswith("elements = {"):
            body = line[len("elements = {"):]
            out.sets[current_set] += len([e for e in body.rstrip("}").split(",") if e.strip()])
            in_elements = not line.endswith("}")
        elif chain is not None and line and not line.startswith(("type ", "policy ")):
            out.chains[chain].append(_hash(line))
    return out


class NftablesOwner:
    def __init__(self, runner: Runner, families: tuple[str, ...] = ("ip", "ip6")) -> None:
        self._runner = runner
        self.families = families
        self._chains: dict[tuple[str, str], _ChainModel] = {}
        self._sets: dict[tuple[str, str], _SetModel] = {}
        self._tables: set[str] = set()
        self._pending: list[str] = []
        self._need_readback = True
        self._written = False
        self.stats = NftStats()
        self.last_readback = 0.0

    # -- desired state ---------------------------------------------------------------------

    def load_script(self, script: str) -> None:
        """Fold a compiler script into the model and queue it for the next apply."""
        lines = [ln for ln in script.splitlines() if ln.strip()]
        for line in lines:
            self._fold(line)
        self._pending.extend(lines)

    def reset_desired(self) -> None:
        self._chains.clear()
        self._sets.clear()
        self._tables.clear()
        self._pending.clear()
        self._need_readback = True

    def _fold(self, line: str) -> None:
        parts = line.split(None, 5)
        verb, obj = parts[0], parts[1]
        if obj == "table":
            fam = parts[2]
            if verb == "add":
                self._tables.add(fam)
            elif verb == "delete":
                self._tables.discard(fam)
                self._chains = {k: v for k, v in self._chains.items() if k[0] != fam}
                self._sets = {k: v for k, v in self._sets.items() if k[0] != fam}
            return
        if len(parts) < 5 or parts[3] != TABLE:
            raise ValueError(f"unexpected nft statement: {line!r}")
        key = (parts[2], parts[4].split(" ", 1)[0])
        if obj == "chain":
            if verb == "add":
                c = self._chains.get(key)
                if c is None:
                    self._chains[key] = _ChainModel(line)
                else:
                    c.decl = line
            elif verb == "flush":
                self._chains[key].rules.clear()
            elif verb == "delete":
                self._chains.pop(key, None)
        elif obj == "rule" and verb == "add":
            self._chains[key].rules.append(line)
        elif obj in ("set", "map"):
            if verb == "add":
                s = self._sets.get(key)
                if s is None:
                    self._sets[key] = _SetModel(obj, line)
                else:
                    s.decl = line
            elif verb == "flush":
                self._sets[key].elements.clear()
            elif verb == "delete":
                self._sets.pop(key, None)
        elif obj == "element":
            s = self._sets[key]
            if verb == "add":
                s.elements.update((_key(e), e) for e in _elements(line))
            elif verb == "delete":
                for e in _elements(line):
                    s.elements.pop(_key(e), None)
        else:
            raise ValueError(f"unexpected nft statement: {line!r}")

    def chain_rules(self, family: str, name: str) -> list[str] | None:
        c = self._chains.get((family, name))
        return list(c.rules) if c else None

    # -- kernel ----------------------------------------------------------------------------

    def mark_resync(self) -> None:
        self._need_readback = True

    @property
    def in_sync(self) -> bool:
        return not self._pending and not self._need_readback

    async def read_back(self, family: str) -> KernelTable | None:
        res = await self._runner.run([NFT, "list", "table", family, TABLE])
        if res.returncode != 0:
            if "No such file" in res.stderr or "does not exist" in res.stderr:
                return None
            raise KernelError(f"nft list table {family} {TABLE}: {res.stderr.strip()}")
        return parse_list(res.stdout)

    async def apply(self, allow_deletes: bool = True) -> bool:
        wrote = False
        if self._pending and not self._need_readback:
            script = "\n".join(self._pending) + "\n"
            self._pending.clear()
            try:
                await self._run(script)
                wrote = True
                self._written = True
            except KernelError as exc:
                log.warning("nft script failed, repairing from the model: %s", exc)
                self._need_readback = True
        if self._need_readback:
            self._pending.clear()
            wrote = await self._repair(allow_deletes) or wrote
        return wrote

    async def _repair(self, allow_deletes: bool) -> bool:
        lines: list[str] = []
        self.stats.readbacks += 1
        self.last_readback = time.monotonic()
        for fam in self.families:
            kernel = await self.read_back(fam)
            want_table = fam in self._tables
            if kernel is None:
                if want_table:
                    # A whole table (cold start, or deleted by hand): one block, which nft
                    # parses ~20% faster than the same content as statements.
                    lines.append(self._table_block(fam))
                    self.stats.chains_repaired += self._written * sum(
                        1 for f, _ in self._chains if f == fam)
                continue
            elif not want_table:
                if allow_deletes:
                    lines.append(f"delete table {fam} {TABLE}")
                    self.stats.deleted += 1
                continue
            lines += self._repair_family(fam, kernel, allow_deletes)
        self._need_readback = False
        if not lines:
            return False
        try:
            await self._run("\n".join(lines) + "\n")
        except KernelError:
            self._need_readback = True
            raise
        return True

    def _repair_family(self, fam: str, kernel: KernelTable, allow_deletes: bool) -> list[str]:
        sets = {n: s for (f, n), s in self._sets.items() if f == fam}
        chains = {n: c for (f, n), c in self._chains.items() if f == fam}
        out: list[str] = []
        # Declarations first so every reference below resolves.
        for name, s in sorted(sets.items()):
            if kernel.sets.get(name) != len(s.elements):
                out.append(s.decl)
                out.append(f"flush {s.kind} {fam} {TABLE} {name}")
                if name in kernel.sets:
                    self.stats.sets_repaired += self._written
        broken = sorted(n for n, c in chains.items()
                        if tuple(kernel.chains.get(n, ["missing"])) != c.hashes)
        out += [chains[n].decl for n in sorted(chains) if n not in kernel.chains]
        for name in broken:
            if name in kernel.chains:
                self.stats.chains_repaired += self._written
            out.append(f"flush chain {fam} {TABLE} {name}")
            out += chains[name].rules
        for name, s in sorted(sets.items()):
            if kernel.sets.get(name) != len(s.elements) and s.elements:
                elems = sorted(s.elements.values())
                for i in range(0, len(elems), 1000):
                    out.append(f"add element {fam} {TABLE} {name} "
                               f"{{ {', '.join(elems[i:i + 1000])} }}")
        if allow_deletes:
            extra_chains = sorted(set(kernel.chains) - set(chains))
            extra_sets = sorted(set(kernel.sets) - set(sets))
            # Flush first (rules reference sets and chains), then maps and sets (map elements
            # reference chains), then the chains themselves.
            out += [f"flush chain {fam} {TABLE} {n}" for n in extra_chains]
            out += [f"delete {kernel.kinds.get(n, 'set')} {fam} {TABLE} {n}" for n in extra_sets]
            out += [f"delete chain {fam} {TABLE} {n}" for n in extra_chains]
            self.stats.deleted += len(extra_chains) + len(extra_sets)
        return out

    def _table_block(self, fam: str) -> str:
        """The family's whole desired table in nft's block syntax."""
        out = [f"table {fam} {TABLE} {{"]
        for (f, name), st in sorted(self._sets.items()):
            if f != fam:
                continue
            decl = _braced(st.decl)
            elems = ", ".join(sorted(st.elements.values()))
            body = f"{decl} elements = {{ {elems} }}" if elems else decl
            out.append(f"\t{st.kind} {name} {{ {body} }}")
        for (f, name), ch in sorted(self._chains.items()):
            if f != fam:
                continue
            out.append(f"\tchain {name} {{")
            decl = _braced(ch.decl)
            if decl:
                out.append(f"\t\t{decl}")
            prefix = f"add rule {fam} {TABLE} {name} "
            out += [f"\t\t{r[len(prefix):]}" for r in ch.rules]
            out.append("\t}")
        out.append("}")
        return "\n".join(out)

    async def _run(self, script: str) -> None:
        self.stats.scripts += 1
        self.stats.script_lines += script.count("\n")
        self.stats.last_script = script
        res = await self._runner.run([NFT, "-f", "-"], input=script)
        if res.returncode != 0:
            raise KernelError(f"nft -f: {res.stderr.strip()[:2000]}")
