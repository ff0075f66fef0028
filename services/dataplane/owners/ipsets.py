"""The IP-set owner: Calico's ``cali4*`` / ``cali6*`` sets, written with ``ipset restore``.

Desired membership per set name, and a shadow of what the kernel holds. ``apply_updates()``
writes every dirty set in one ``ipset restore``:

- a set the kernel does not have is created and filled in place (no rule can reference it yet);
- a set whose kernel content is unknown or mostly wrong is filled into a temporary set
  (``cali4t<n>``) that is then ``swap``-ped in and destroyed, so rules never see it half-filled;
- otherwise only the difference is written, as ``del``/``add`` lines with ``-exist``.

``apply_deletes()`` destroys sets that are ours but no longer wanted. The driver calls it only
after the iptables/nftables writes that stopped referencing them, and only once the datastore is
in sync; a set still referenced by a rule fails to destroy and stays pending.

Read-back (``ipset save``) parses only our sets; a member removed or added by hand shows up as a
difference and is repaired with deltas on the next apply. Members are compared in ipset's own
spelling (``10.0.0.5`` for a /32, ``10.0.0.5,tcp:80``), so intake canonicalises them.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..commands import KernelError, Runner

log = logging.getLogger(__name__)

OUR_PREFIXES = ("cali4", "cali6")
TEMP_PREFIXES = ("cali4t", "cali6t")
MAXELEM = 1048576
# A rewrite goes through temp + swap only when it is both large and most of the set; smaller
# differences are cheaper as deltas and just as safe (each line is a valid intermediate state).
SWAP_MIN_CHANGES = 64
IPSET = "ipset"


def is_ours(name: str) -> bool:
    return name.startswith(OUR_PREFIXES)


def is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIXES)


def canonical_member(member: str, set_type: str) -> str:
    """A member as ``ipset save`` prints it."""
    m = member.strip()
    if set_type == "hash:ip,port":
        addr, _, pp = m.partition(",")
        proto, _, port = pp.partition(":")
        if not port:
            proto, port = "tcp", proto
        return f"{_addr(addr)},{proto.lower()}:{int(port)}"
    if "/" in m:
        addr, _, plen = m.partition("/")
        full = "128" if ":" in addr else "32"
        if plen == full:
            return _addr(addr)
        if set_type == "hash:net":
            return str(ipaddress.ip_network(m, strict=False))
    return _addr(m)


def _addr(a: str) -> str:
    if ":" in a:
        return str(ipaddress.IPv6Address(a))
    return a


@dataclass
class IPSetSpec:
    set_type: str  # hash:net, hash:ip, hash:ip,port
    family: str  # inet, inet6
    maxelem: int = MAXELEM

    @property
    def create_opts(self) -> str:
        return f"{self.set_type} family {self.family} maxelem {self.maxelem}"


@dataclass
class _Set:
    spec: IPSetSpec
    members: set[str] = field(default_factory=set)


@dataclass
class IPSetStats:
    restores: int = 0
    restore_lines: int = 0
    last_restore: str = ""
    swaps: int = 0
    deltas: int = 0
    readbacks: int = 0
    sets_repaired: int = 0
    destroyed: int = 0


class IPSetOwner:
    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._desired: dict[str, _Set] = {}
        self._kernel: dict[str, _Set] = {}
        self._dirty: set[str] = set()
        self._written: set[str] = set()
        self._need_readback = True
        self._kernel_temps: set[str] = set()
        self.stats = IPSetStats()
        self.last_readback = 0.0

    # -- desired state ---------------------------------------------------------------------

    def replace(self, name: str, set_type: str, members: Iterable[str],
                family: str | None = None, maxelem: int = MAXELEM) -> None:
        fam = family or ("inet6" if name.startswith("cali6") else "inet")
        spec = IPSetSpec(set_type, fam, maxelem)
        self._desired[name] = _Set(spec, {canonical_member(m, set_type) for m in members})
        self._dirty.add(name)

    def add_members(self, name: str, members: Iterable[str]) -> None:
        s = self._desired[name]
        s.members.update(canonical_member(m, s.spec.set_type) for m in members)
        self._dirty.add(name)

    def remove_members(self, name: str, members: Iterable[str]) -> None:
        s = self._desired[name]
        s.members.difference_update(canonical_member(m, s.spec.set_type) for m in members)
        self._dirty.add(name)

    def remove(self, name: str) -> None:
        if self._desired.pop(name, None) is not None:
            self._dirty.add(name)

    def members(self, name: str) -> set[str] | None:
        s = self._desired.get(name)
        return set(s.members) if s else None

    def names(self) -> set[str]:
        return set(self._desired)

    def reset_desired(self) -> None:
        self._dirty.update(self._desired)
        self._desired.clear()

    def load_restore_text(self, text: str) -> None:
        """Take a compiler's ``ipset restore`` input as desired state (see module doc)."""
        specs: dict[str, IPSetSpec] = {}
        temps: dict[str, set[str]] = {}
        for raw in text.splitlines():
            parts = raw.split()
            if not parts:
                continue
            op = parts[0]
            if op == "create":
                name, set_type = parts[1], parts[2]
                fam = _opt(parts, "family") or ("inet6" if name.startswith("cali6") else "inet")
                maxelem = int(_opt(parts, "maxelem") or MAXELEM)
                specs[name] = IPSetSpec(set_type, fam, maxelem)
                if is_temp(name):
                    temps[name] = set()
                elif name not in self._desired:
                    self.replace(name, set_type, (), fam, maxelem)
            elif op == "flush":
                temps[parts[1]] = set()
            elif op == "add":
                if parts[1] in temps:
                    temps[parts[1]].add(parts[2])
                else:
                    self.add_members(parts[1], [parts[2]])
            elif op == "del":
                self.remove_members(parts[1], [parts[2]])
            elif op == "swap":
                temp, name = parts[1], parts[2]
                spec = specs.get(name) or specs[temp]
                self.replace(name, spec.set_type, temps.pop(temp, set()), spec.family,
                             spec.maxelem)
            elif op == "destroy":
                if not is_temp(parts[1]):
                    self.remove(parts[1])
            else:
                raise ValueError(f"unexpected ipset restore line: {raw!r}")

    # -- kernel ----------------------------------------------------------------------------

    def mark_resync(self) -> None:
        self._need_readback = True

    @property
    def in_sync(self) -> bool:
        return not self._dirty and not self._need_readback

    async def read_back(self) -> dict[str, _Set]:
        res = await self._runner.run([IPSET, "save"])
        if res.returncode != 0:
            raise KernelError(f"ipset save: {res.stderr.strip()}")
        return parse_save(res.stdout)

    async def _resync(self) -> None:
        kernel = await self.read_back()
        self.stats.readbacks += 1
        self.last_readback = time.monotonic()
        self._kernel_temps = {n for n in kernel if is_temp(n)}
        self._kernel = {n: s for n, s in kernel.items() if not is_temp(n)}
        dirty: set[str] = set()
        for name, want in self._desired.items():
            have = self._kernel.get(name)
            if have is None or have.spec.set_type != want.spec.set_type \
                    or have.members != want.members:
                if name not in self._dirty and name in self._written:
                    self.stats.sets_repaired += 1
                dirty.add(name)
        dirty.update(n for n in self._kernel if n not in self._desired)
        self._dirty = dirty
        self._need_readback = False

    async def apply_updates(self) -> bool:
        """Create, rewrite and update sets (before the rules that use them are written)."""
        if self._need_readback:
            await self._resync()
        lines: list[str] = []
        done: list[str] = []
        used_temps = set(self._kernel_temps)
        for name in sorted(n for n in self._dirty if n in self._desired):
            want = self._desired[name]
            have = self._kernel.get(name)
            if have is not None and have.spec.set_type == want.spec.set_type \
                    and have.spec.family == want.spec.family:
                add = want.members - have.members
                rem = have.members - want.members
                if not add and not rem:
                    done.append(name)
                    continue
                changes = len(add) + len(rem)
                if not rem or changes <= SWAP_MIN_CHANGES or changes <= len(want.members) // 2:
                    lines += [f"del {name} {m} -exist" for m in sorted(rem)]
                    lines += [f"add {name} {m} -exist" for m in sorted(add)]
                    self.stats.deltas += 1
                else:
                    temp = _free_temp(name, used_temps, self._kernel)
                    used_temps.add(temp)
                    lines.append(f"create {temp} {want.spec.create_opts} -exist")
                    lines.append(f"flush {temp}")
                    lines += [f"add {temp} {m}" for m in sorted(want.members)]
                    lines.append(f"swap {temp} {name}")
                    lines.append(f"destroy {temp}")
                    self.stats.swaps += 1
            else:
                if have is not None:
                    # Different type: swap cannot cross types; replace the set outright.
                    lines.append(f"destroy {name}")
                lines.append(f"create {name} {want.spec.create_opts}")
                lines += [f"add {name} {m}" for m in sorted(want.members)]
            done.append(name)
        if lines:
            try:
                await self._restore(lines)
            except KernelError:
                self._need_readback = True
                raise
        for name in done:
            want = self._desired[name]
            self._kernel[name] = _Set(want.spec, set(want.members))
            self._written.add(name)
            self._dirty.discard(name)
        return bool(lines)

    async def apply_deletes(self, allow_deletes: bool = True) -> bool:
        """Destroy our sets that are no longer wanted (after the rules stopped using them)."""
        if not allow_deletes:
            return False
        gone = sorted(n for n in self._dirty if n not in self._desired and n in self._kernel)
        temps = sorted(self._kernel_temps)
        if not gone and not temps:
            self._dirty.difference_update(n for n in list(self._dirty) if n not in self._desired)
            return False
        failed: list[str] = []
        try:
            await self._restore([f"destroy {n}" for n in [*temps, *gone]])
        except KernelError:
            # One referenced set aborts the batch; fall back to one at a time.
            for n in [*temps, *gone]:
                res = await self._runner.run([IPSET, "destroy", n])
                if res.returncode != 0 and "does not exist" not in res.stderr:
                    log.warning("ipset destroy %s failed: %s", n, res.stderr.strip())
                    failed.append(n)
        self._kernel_temps.clear()
        for n in gone:
            if n not in failed:
                self._kernel.pop(n, None)
                self._dirty.discard(n)
                self.stats.destroyed += 1
        if failed:
            raise KernelError(f"ipset destroy failed for {len(failed)} set(s): {failed[:5]}")
        return True

    async def _restore(self, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n"
        self.stats.restores += 1
        self.stats.restore_lines += len(lines)
        self.stats.last_restore = text
        res = await self._runner.run([IPSET, "restore"], input=text)
        if res.returncode != 0:
            raise KernelError(f"ipset restore: {res.stderr.strip()[:2000]}")


def _opt(parts: list[str], key: str) -> str | None:
    try:
        return parts[parts.index(key) + 1]
    except (ValueError, IndexError):
        return None


def _free_temp(name: str, used: set[str], kernel: dict[str, _Set]) -> str:
    prefix = "cali6t" if name.startswith("cali6") else "cali4t"
    n = 0
    while f"{prefix}{n}" in used or f"{prefix}{n}" in kernel:
        n += 1
    return f"{prefix}{n}"


def parse_save(text: str) -> dict[str, _Set]:
    """Our sets from ``ipset save``: name → type, family and members."""
    sets: dict[str, _Set] = {}
    for line in text.splitlines():
        if line.startswith("add "):
            _, name, member = line.split(" ", 2)
            s = sets.get(name)
            if s is not None:
                s.members.add(member.split(" ", 1)[0])
        elif line.startswith("create "):
            parts = line.split()
            if is_ours(parts[1]):
                fam = _opt(parts, "family") or "inet"
                sets[parts[1]] = _Set(IPSetSpec(parts[2], fam,
                                                int(_opt(parts, "maxelem") or MAXELEM)))
    return sets
