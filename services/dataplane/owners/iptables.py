"""The iptables table owner: desired chains per table, written with ``iptables-restore --noflush``.

Goals, as Felix's ``iptables/table.go`` states them:

- **Bulk writes**: one ``iptables-restore --noflush --wait`` per table per apply, carrying only
  the chains whose content changed (a chain is compared by its rules' ``cali:`` IDs, which hash
  the chain name, the rule and every rule above it, so equal IDs mean equal chains).
- **Survive other programs**: our rules in the kernel's own chains (``INPUT``, ``FORWARD``…)
  are *hooks* placed at the top (or bottom, for append hooks) with a ``cali:`` comment; other
  programs' rules are never touched. A periodic read-back (``iptables-save -t <table>``)
  parses only chain names and ``cali:`` IDs, never rules, and rewrites what drifted.
- **Defer deletes**: a ``cali-`` chain or a ``cali:`` hook we do not want is removed only when
  the caller allows deletes (after the datastore is in sync): mark-and-sweep over what is
  recognisably ours.

A restore transaction is ordered so every reference resolves: chain declarations (which flush
an existing chain, even with ``--noflush``), then the chains' rules, then hook deletions and
insertions, then ``-X`` of chains to delete. If a transaction with deletions fails (a chain we
want gone may be referenced by a rule we do not own), it is retried at once without them, and
the deletions stay pending.

Backend: ``legacy`` or ``nft`` (the ``iptables-legacy-*`` / ``iptables-nft-*`` tools), chosen
by ``detect_backend`` as Felix does unless configured: 10 or more rules in the legacy tables
means legacy, otherwise whichever backend has more rules, legacy on a tie.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..commands import KernelError, Runner

log = logging.getLogger(__name__)

CHAIN_PREFIX = "cali-"
HASH_LEN = 16
_HASH_RE = re.compile(r'--comment "?cali:([A-Za-z0-9_-]{16})')
BACKENDS = ("legacy", "nft")


def tool(backend: str, ip_version: int, verb: str) -> str:
    """``iptables-nft-restore`` etc.; falls back to the unsuffixed tool when absent (Felix)."""
    base = "iptables" if ip_version == 4 else "ip6tables"
    specific = f"{base}-{backend}-{verb}"
    if shutil.which(specific):
        return specific
    return f"{base}-{verb}"


def count_rules(save_output: str) -> int:
    return sum(1 for line in save_output.splitlines() if line.startswith("-"))


async def detect_backend(runner: Runner, configured: str = "auto") -> str:
    """Felix's ``DetectBackend``: count rules each backend holds; ``configured`` wins if set."""
    configured = configured.lower()
    legacy = 0
    for v in (4, 6):
        res = await runner.run([tool("legacy", v, "save")])
        legacy += count_rules(res.stdout) if res.returncode == 0 else 0
    if legacy >= 10:
        detected = "legacy"
    else:
        nft = 0
        for v in (4, 6):
            res = await runner.run([tool("nft", v, "save")])
            nft += count_rules(res.stdout) if res.returncode == 0 else 0
        detected = "legacy" if legacy >= nft else "nft"
    if configured in BACKENDS:
        if configured != detected:
            log.warning("iptables backend %s configured; %s detected", configured, detected)
        return configured
    log.info("iptables backend detected: %s", detected)
    return detected


def rule_hashes(chain: str, bodies: Iterable[str]) -> list[str]:
    """Felix's rule IDs: running SHA-224 over the chain name, then each rule with ``HASH``."""
    digest = hashlib.sha224(chain.encode()).digest()
    out = []
    for body in bodies:
        digest = hashlib.sha224(digest + f"-A {chain} HASH {body}".rstrip().encode()).digest()
        out.append(base64.urlsafe_b64encode(digest).decode()[:HASH_LEN])
    return out


def hash_of(line: str) -> str | None:
    m = _HASH_RE.search(line)
    return m.group(1) if m else None


def normalise_rules(chain: str, rules: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(bodies, hashes) for rules given as ``-A chain …`` / ``-I chain n …`` lines or bodies.

    Bodies that carry no ``cali:`` ID get one (hashed here); the compiler's rules carry theirs.
    """
    bodies: list[str] = []
    for r in rules:
        r = r.strip()
        if r.startswith(("-A ", "-I ")):
            parts = r.split(" ", 3 if r.startswith("-I ") and _is_pos(r) else 2)
            r = parts[-1] if len(parts) > 2 else ""
        bodies.append(r)
    missing = [i for i, b in enumerate(bodies) if hash_of(b) is None]
    if missing:
        hashes = rule_hashes(chain, bodies)
        for i in missing:
            bodies[i] = f'-m comment --comment "cali:{hashes[i]}" {bodies[i]}'.rstrip()
    return tuple(bodies), tuple(hash_of(b) or "" for b in bodies)


def _is_pos(line: str) -> bool:
    parts = line.split(" ", 3)
    return len(parts) > 2 and parts[2].isdigit()


@dataclass(frozen=True)
class _Chain:
    bodies: tuple[str, ...]
    hashes: tuple[str, ...]


@dataclass(frozen=True)
class Hooks:
    """Our rules in one kernel chain: ``insert`` at the top in order, ``append`` at the end."""

    insert: tuple[str, ...] = ()
    insert_hashes: tuple[str, ...] = ()
    append: tuple[str, ...] = ()
    append_hashes: tuple[str, ...] = ()


@dataclass
class KernelChain:
    """What ``iptables-save`` says about one chain: built-in or not, each rule's ``cali:`` ID."""

    builtin: bool
    hashes: list[str | None] = field(default_factory=list)


def parse_save(text: str) -> dict[str, KernelChain]:
    """Chains of one table from ``iptables-save -t <table>``: names and rule IDs only."""
    chains: dict[str, KernelChain] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            chains[name] = KernelChain(builtin=not rest.startswith("-"))
        elif line.startswith("-A "):
            name = line[3:].split(" ", 1)[0]
            chains.setdefault(name, KernelChain(builtin=False)).hashes.append(hash_of(line))
    return chains


@dataclass
class TableStats:
    restores: int = 0
    restore_lines: int = 0
    last_restore: str = ""
    readbacks: int = 0
    chains_repaired: int = 0
    hooks_repaired: int = 0
    chains_deleted: int = 0


class IptablesTable:
    """One iptables table (``filter``, ``nat``, ``mangle``, ``raw``) for one IP version."""

    def __init__(
        self,
        table: str,
        runner: Runner,
        *,
        backend: str = "nft",
        ip_version: int = 4,
        lock_timeout: int = 10,
    ) -> None:
        self.table = table
        self.ip_version = ip_version
        self.backend = backend
        self._runner = runner
        self._lock_timeout = lock_timeout
        self._restore = tool(backend, ip_version, "restore")
        self._save = tool(backend, ip_version, "save")
        self._desired: dict[str, _Chain] = {}
        self._hooks: dict[str, Hooks] = {}
        # Shadow: what we believe the kernel holds (chain → rule IDs), and kernel chains.
        self._kernel: dict[str, tuple[str | None, ...]] = {}
        self._kernel_builtin: dict[str, list[str | None]] = {}
        self._kernel_hooks_ok: set[str] = set()
        self._written: set[str] = set()
        self._dirty: set[str] = set()
        self._dirty_hooks: set[str] = set()
        self._need_readback = True
        self._readback_fresh = False
        self.stats = TableStats()
        self.last_readback = 0.0

    # -- desired state ---------------------------------------------------------------------

    def set_chain(self, name: str, rules: Sequence[str]) -> None:
        bodies, hashes = normalise_rules(name, rules)
        new = _Chain(bodies, hashes)
        if self._desired.get(name) != new:
            self._desired[name] = new
            self._dirty.add(name)

    def remove_chain(self, name: str) -> None:
        if self._desired.pop(name, None) is not None or name in self._kernel:
            self._dirty.add(name)

    def set_hooks(self, kernel_chain: str, insert: Sequence[str] = (),
                  append: Sequence[str] = ()) -> None:
        ins, ins_h = normalise_rules(kernel_chain, insert)
        app, app_h = normalise_rules(kernel_chain, append)
        new = Hooks(ins, ins_h, app, app_h)
        if self._hooks.get(kernel_chain, Hooks()) != new:
            self._hooks[kernel_chain] = new
            self._dirty_hooks.add(kernel_chain)

    def chain_names(self) -> set[str]:
        return set(self._desired)

    def desired_chain(self, name: str) -> tuple[str, ...] | None:
        c = self._desired.get(name)
        return c.bodies if c else None

    def reset_desired(self) -> None:
        """Forget intent (a new stream generation); the kernel shadow stays for diffing."""
        for name in self._desired:
            self._dirty.add(name)
        self._desired.clear()
        for kchain in self._hooks:
            self._dirty_hooks.add(kchain)
        self._hooks.clear()

    def load_restore_text(self, text: str) -> None:
        """Apply a compiler's ``iptables-restore`` input for this table as desired state.

        ``:chain`` / ``-F chain`` start (or empty) a chain, ``-A`` appends to it, ``-X`` removes
        it; ``-I``/``-A`` on a kernel chain replace that chain's hooks.
        """
        chains: dict[str, list[str]] = {}
        hook_ins: dict[str, list[tuple[int, str]]] = {}
        hook_app: dict[str, list[str]] = {}
        removed: list[str] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#*" or line == "COMMIT":
                continue
            if line[0] == ":":
                chains[line[1:].split(" ", 1)[0]] = []
                continue
            op, _, rest = line.partition(" ")
            name, _, body = rest.partition(" ")
            if op == "-A":
                if name.startswith(CHAIN_PREFIX):
                    chains.setdefault(name, []).append(body)
                else:
                    hook_app.setdefault(name, []).append(body)
            elif op == "-I":
                pos, _, body2 = body.partition(" ")
                if pos.isdigit():
                    hook_ins.setdefault(name, []).append((int(pos), body2))
                else:
                    hook_ins.setdefault(name, []).append((10**9, body))
            elif op == "-F":
                chains[name] = []
            elif op == "-X":
                removed.append(name)
            else:
                raise ValueError(f"unexpected iptables-restore line for {self.table}: {line!r}")
        for name, bodies in chains.items():
            self.set_chain(name, bodies)
        for name in removed:
            if name not in chains:
                self.remove_chain(name)
        for kchain in set(hook_ins) | set(hook_app):
            ins = [b for _, b in sorted(hook_ins.get(kchain, []), key=lambda x: x[0])]
            self.set_hooks(kchain, ins, hook_app.get(kchain, []))

    # -- kernel ----------------------------------------------------------------------------

    def mark_resync(self) -> None:
        self._need_readback = True

    @property
    def in_sync(self) -> bool:
        return not (self._dirty or self._dirty_hooks or self._need_readback)

    async def read_back(self) -> dict[str, KernelChain]:
        out = await self._runner.run([self._save, "-t", self.table])
        if out.returncode != 0:
            # A table that was never used has nothing to save on some kernels.
            if "does not exist" in out.stderr or "Table does not exist" in out.stderr:
                return {}
            raise KernelError(f"{self._save} -t {self.table}: {out.stderr.strip()}")
        return parse_save(out.stdout)

    async def _resync(self) -> None:
        chains = await self.read_back()
        self.stats.readbacks += 1
        self.last_readback = time.monotonic()
        self._kernel = {n: tuple(c.hashes) for n, c in chains.items()
                        if not c.builtin and n.startswith(CHAIN_PREFIX)}
        self._kernel_builtin = {n: c.hashes for n, c in chains.items() if c.builtin}
        # What to write is recomputed from the kernel as it is: a chain that already matches
        # is not rewritten (a restarted driver rewrites nothing that is right).
        dirty: set[str] = set()
        for name, want in self._desired.items():
            if self._kernel.get(name) != want.hashes:
                if name not in self._dirty and name in self._written:
                    self.stats.chains_repaired += 1
                dirty.add(name)
        dirty.update(n for n in self._kernel if n not in self._desired)
        self._dirty = dirty
        dirty_hooks: set[str] = set()
        for kchain, hashes in self._kernel_builtin.items():
            if not _hooks_match(hashes, self._hooks.get(kchain, Hooks())):
                if kchain in self._kernel_hooks_ok and kchain not in self._dirty_hooks:
                    self.stats.hooks_repaired += 1
                dirty_hooks.add(kchain)
        dirty_hooks.update(k for k in self._hooks if k not in self._kernel_builtin)
        self._dirty_hooks = dirty_hooks
        self._need_readback = False
        self._readback_fresh = True

    async def apply(self, allow_deletes: bool = True) -> bool:
        """Write what changed; returns whether anything was written."""
        if self._need_readback:
            await self._resync()
        elif self._dirty_hooks and not self._readback_fresh:
            # Fixing a kernel chain needs the kernel's current rule positions.
            await self._resync()
        text, deletes = self._build(allow_deletes)
        if text is None:
            # Only deferred deletions are left; the sweep after in-sync rediscovers them.
            self._dirty_hooks.clear()
            self._readback_fresh = False
            return False
        try:
            await self._write(text)
        except KernelError:
            if not deletes:
                self._need_readback = True
                raise
            log.warning("iptables %s: restore with %d deletions failed; retrying without",
                        self.table, len(deletes))
            text2, _ = self._build(False)
            try:
                if text2 is not None:
                    await self._write(text2)
            except KernelError:
                self._need_readback = True
                raise
            self._committed(allow_deletes=False)
            self._need_readback = True
            return True
        self._committed(allow_deletes)
        self.stats.chains_deleted += len(deletes)
        return True

    def _wanted_deletes(self, allow_deletes: bool) -> list[str]:
        if not allow_deletes:
            return []
        return sorted(n for n in self._dirty if n not in self._desired and n in self._kernel)

    def _build(self, allow_deletes: bool) -> tuple[str | None, list[str]]:
        updates = sorted(n for n in self._dirty if n in self._desired)
        deletes = self._wanted_deletes(allow_deletes)
        hook_lines = self._hook_lines(allow_deletes)
        if not updates and not deletes and not hook_lines:
            return None, []
        lines = [f"*{self.table}"]
        lines += [f":{n} - -" for n in updates]
        lines += [f":{n} - -" for n in deletes]
        for n in updates:
            lines += [f"-A {n} {b}".rstrip() for b in self._desired[n].bodies]
        lines += hook_lines
        lines += [f"-X {n}" for n in deletes]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n", deletes

    def _hook_lines(self, allow_deletes: bool) -> list[str]:
        out: list[str] = []
        for kchain in sorted(self._dirty_hooks):
            want = self._hooks.get(kchain, Hooks())
            current = self._kernel_builtin.get(kchain, [])
            ours = set(want.insert_hashes) | set(want.append_hashes)
            # Delete (bottom-up, so positions stay valid) every cali rule that is misplaced or
            # unknown; unknown ones only when deletes are allowed.
            delete_pos = [
                i + 1 for i, h in enumerate(current)
                if h is not None and (allow_deletes or h in ours)
            ]
            out += [f"-D {kchain} {pos}" for pos in reversed(delete_pos)]
            out += [f"-I {kchain} {i + 1} {b}" for i, b in enumerate(want.insert)]
            out += [f"-A {kchain} {b}" for b in want.append]
        return out

    async def _write(self, text: str) -> None:
        argv = [self._restore, "--noflush", "--wait", str(self._lock_timeout)]
        self.stats.restores += 1
        self.stats.restore_lines += text.count("\n")
        self.stats.last_restore = text
        res = await self._runner.run(argv, input=text)
        if res.returncode != 0:
            raise KernelError(f"{self._restore} ({self.table}): {res.stderr.strip()[:2000]}")

    def _committed(self, allow_deletes: bool) -> None:
        for n in list(self._dirty):
            if n in self._desired:
                self._kernel[n] = self._desired[n].hashes
                self._written.add(n)
                self._dirty.discard(n)
            elif allow_deletes or n not in self._kernel:
                self._kernel.pop(n, None)
                self._dirty.discard(n)
        for kchain in self._dirty_hooks:
            want = self._hooks.get(kchain, Hooks())
            # Our rules now sit at the top/bottom; unknown cali rules are gone if allowed.
            current = self._kernel_builtin.get(kchain, [])
            ours = set(want.insert_hashes) | set(want.append_hashes)
            kept_unknown = not allow_deletes
            others = [h for h in current if h is None or (kept_unknown and h not in ours)]
            self._kernel_builtin[kchain] = [*want.insert_hashes, *others, *want.append_hashes]
            self._kernel_hooks_ok.add(kchain)
        self._dirty_hooks.clear()
        self._readback_fresh = False


def _hooks_match(hashes: Sequence[str | None], want: Hooks) -> bool:
    n_ins, n_app = len(want.insert_hashes), len(want.append_hashes)
    if len(hashes) < n_ins + n_app:
        return False
    if tuple(hashes[:n_ins]) != want.insert_hashes:
        return False
    if n_app and tuple(hashes[len(hashes) - n_app:]) != want.append_hashes:
        return False
    middle = hashes[n_ins:len(hashes) - n_app]
    return all(h is None for h in middle)
