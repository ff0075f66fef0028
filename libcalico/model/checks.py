"""Field-level checks shared by the per-kind validators.

Every check takes a :class:`Ctx` (which resource is being validated) and the dotted path of the
field, and either returns the value (normalised the way Calico's JSON round trip would store it)
or raises ``ValidationError`` naming the resource, the field, the offending value and what is
allowed. Validators stop at the first problem.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from libcalico.errors import ValidationError
from libcalico.model.names import label_value_problem, qualified_name_problem
from libcalico.selector import SelectorError, parse

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOL_NAMES = ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite")
PORT_PROTOCOLS = frozenset({"TCP", "UDP", "SCTP", 6, 17, 132})
ICMP_PROTOCOLS = frozenset({"ICMP", "ICMPv6", 1, 58})

_PORT_NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
_PORT_RANGE_RE = re.compile(r"^(\d+):(\d+)$")
_DURATION_RE = re.compile(r"^[-+]?(((\d+(\.\d*)?)|(\.\d+))(ns|us|µs|μs|ms|s|m|h))+$")
_MAC_RE = re.compile(
    r"^([0-9A-Fa-f]{2}([:-])([0-9A-Fa-f]{2}\2){4}[0-9A-Fa-f]{2}"
    r"|[0-9A-Fa-f]{2}([:-])([0-9A-Fa-f]{2}\4){6}[0-9A-Fa-f]{2}"
    r"|[0-9A-Fa-f]{2}([:-])([0-9A-Fa-f]{2}\6){18}[0-9A-Fa-f]{2}"
    r"|[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){2}"
    r"|[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){3}"
    r"|[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){9})$"
)
INTERFACE_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")


def show(value: Any) -> str:
    """A value as it appears in an error message."""
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    try:
        return json.dumps(value, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def one_of(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)


class Ctx:
    """The resource being validated, for error messages: ``IPPool(default-ipv4-ippool)``."""

    def __init__(self, kind: str, name: str, namespace: str | None = None) -> None:
        self.kind = kind
        self.ident = f"{kind}({namespace}/{name})" if namespace else f"{kind}({name})"

    def fail(self, field: str, reason: str) -> NoReturn:
        raise ValidationError(reason, resource=self.ident, field=field)


def join_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# --- JSON shapes ---------------------------------------------------------------------------


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    if value is None:
        return "null"
    return type(value).__name__


def as_map(ctx: Ctx, path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        ctx.fail(path, f"must be a mapping, got {type_name(value)} {show(value)}")
    for k in value:
        if not isinstance(k, str):
            ctx.fail(path, f"keys must be strings, got {type_name(k)} {show(k)}")
    return value


def as_list(ctx: Ctx, path: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        ctx.fail(path, f"must be a list, got {type_name(value)} {show(value)}")
    return value


def as_str(ctx: Ctx, path: str, value: Any) -> str:
    if not isinstance(value, str):
        ctx.fail(path, f"must be a string, got {type_name(value)} {show(value)}")
    return value


def as_bool(ctx: Ctx, path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        ctx.fail(path, f"must be true or false, got {type_name(value)} {show(value)}")
    return value


def as_int(ctx: Ctx, path: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.fail(path, f"must be an integer, got {type_name(value)} {show(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            ctx.fail(path, f"{value} is out of range {lo}-{hi}")
        if lo is not None:
            ctx.fail(path, f"{value} must be at least {lo}")
        ctx.fail(path, f"{value} must be at most {hi}")
    return value


def as_number(ctx: Ctx, path: str, value: Any) -> int | float:
    """A float64 field; integral values are kept as ints, as Go's JSON encoder prints them."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        ctx.fail(path, f"must be a number, got {type_name(value)} {show(value)}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            ctx.fail(path, f"{show(value)} is not a finite number")
        if value.is_integer():
            return int(value)
    return value


def as_str_list(ctx: Ctx, path: str, value: Any) -> list[str]:
    items = as_list(ctx, path, value)
    for i, item in enumerate(items):
        as_str(ctx, join_path(path, i), item)
    return items


def as_str_map(ctx: Ctx, path: str, value: Any) -> dict[str, str]:
    m = as_map(ctx, path, value)
    for k, v in m.items():
        as_str(ctx, join_path(path, k), v)
    return m


def enum(ctx: Ctx, path: str, value: Any, allowed: Iterable[str], *, fold: bool = False) -> str:
    """One of ``allowed``; with ``fold`` the match ignores case (stored as given)."""
    allowed = tuple(allowed)
    s = as_str(ctx, path, value)
    ok = s.lower() in {a.lower() for a in allowed} if fold else s in allowed
    if not ok:
        ctx.fail(path, f"{show(s)} is not one of {one_of(allowed)}")
    return s


def check_fields(ctx: Ctx, path: str, obj: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject keys the kind does not define (a typo would otherwise be silently ignored)."""
    known = set(allowed)
    for key in obj:
        if key not in known:
            by_lower = {k.lower(): k for k in known}
            hint = difflib.get_close_matches(key.lower(), sorted(by_lower), n=1, cutoff=0.75)
            if hint:
                extra = f"; did you mean '{by_lower[hint[0]]}'?"
            elif len(known) <= 12:
                extra = f"; known fields: {one_of(sorted(known))}"
            else:
                extra = ""
            ctx.fail(join_path(path, key), f"unknown field '{key}'{extra}")


def drop_nulls(obj: dict[str, Any]) -> dict[str, Any]:
    """``field: null`` in YAML means "unset", as it does for Go's JSON decoder."""
    for key in [k for k, v in obj.items() if v is None]:
        del obj[key]
    return obj


# --- networking values ---------------------------------------------------------------------


def parse_ip(ctx: Ctx, path: str, value: Any, version: int | None = None) -> IPAddress:
    s = as_str(ctx, path, value)
    try:
        if "%" in s:
            raise ValueError
        ip = ipaddress.ip_address(s)
    except ValueError:
        ctx.fail(path, f"{show(s)} is not a valid IP address")
    if version is not None and ip.version != version:
        ctx.fail(path, f"{show(s)} is not an IPv{version} address")
    return ip


def parse_cidr(
    ctx: Ctx,
    path: str,
    value: Any,
    *,
    version: int | None = None,
    allow_ip: bool = False,
    strict: bool = False,
) -> IPNetwork:
    """A CIDR (``allow_ip``: or a bare address, as /32 or /128).

    ``strict`` rejects host bits below the prefix (``10.0.0.1/24``).
    """
    s = as_str(ctx, path, value)
    if "/" not in s and not allow_ip:
        ctx.fail(path, f"{show(s)} is not a CIDR (expected address/prefix-length)")
    try:
        if "%" in s:
            raise ValueError
        addr_text, _, plen = s.partition("/")
        addr = ipaddress.ip_address(addr_text)
        if plen and not plen.isdigit():
            raise ValueError
        net = ipaddress.ip_network(s, strict=False)
    except ValueError:
        ctx.fail(path, f"{show(s)} is not a valid CIDR")
    if version is not None and net.version != version:
        ctx.fail(path, f"{show(s)} is not an IPv{version} CIDR")
    if strict and addr != net.network_address:
        ctx.fail(
            path,
            f"{show(s)} has host bits set; the network is {net} (address must equal the"
            " masked network address)",
        )
    return net


def parse_port(ctx: Ctx, path: str, value: Any) -> int | str:
    """A port as Calico stores it: 80 (int), ``"80:90"``, or a port name."""
    if isinstance(value, bool):
        ctx.fail(path, f"port must be a number, a range 'min:max' or a name, got {show(value)}")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            ctx.fail(path, f"port {value} is out of range 1-65535")
        return value
    s = as_str(ctx, path, value)
    if s.isdigit():
        n = int(s)
        if not 1 <= n <= 65535:
            ctx.fail(path, f"port {show(s)} is out of range 1-65535")
        return n
    m = _PORT_RANGE_RE.match(s)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            ctx.fail(path, f"port range {show(s)} is out of range 1-65535")
        if lo > hi:
            ctx.fail(path, f"port range {show(s)}: minimum {lo} is greater than maximum {hi}")
        return lo if lo == hi else f"{lo}:{hi}"
    if not _PORT_NAME_RE.match(s):
        ctx.fail(
            path,
            f"{show(s)} is not a port number (1-65535), a range 'min:max' or a port name"
            " (1-128 of [a-zA-Z0-9_.-])",
        )
    return s


def parse_protocol(ctx: Ctx, path: str, value: Any) -> int | str:
    """A rule protocol: one of Calico's names (case-sensitive) or a number 1-255."""
    if isinstance(value, bool):
        ctx.fail(path, f"protocol must be a name or a number, got {show(value)}")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int):
        if not 1 <= value <= 255:
            ctx.fail(path, f"protocol number {value} is out of range 1-255")
        return value
    s = as_str(ctx, path, value)
    if s not in PROTOCOL_NAMES:
        ctx.fail(
            path,
            f"protocol {show(s)} is not one of {one_of(PROTOCOL_NAMES)} or a number 1-255"
            " (names are case-sensitive)",
        )
    return s


def parse_as_number(ctx: Ctx, path: str, value: Any) -> int:
    """An AS number 1-4294967295, as an integer or ``"<high>.<low>"`` (asdot)."""
    if isinstance(value, str):
        text = value
        if text.isdigit():
            value = int(text)
        else:
            high, dot, low = text.partition(".")
            if not (dot and high.isdigit() and low.isdigit()):
                ctx.fail(path, f"AS number {show(text)} is not a number or in 'a.b' dotted form")
            h, lo = int(high), int(low)
            if h > 65535 or lo > 65535:
                ctx.fail(path, f"AS number {show(text)}: each dotted part must be 0-65535")
            value = (h << 16) + lo
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.fail(path, f"AS number must be an integer or 'a.b', got {show(value)}")
    if not 1 <= value <= 4294967295:
        ctx.fail(path, f"AS number {value} is out of range 1-4294967295")
    return value


def check_duration(ctx: Ctx, path: str, value: Any) -> str:
    s = as_str(ctx, path, value)
    if s != "0" and not _DURATION_RE.match(s):
        ctx.fail(path, f"{show(s)} is not a duration such as '90s', '1m30s' or '500ms'")
    return s


def check_mac(ctx: Ctx, path: str, value: Any) -> str:
    s = as_str(ctx, path, value)
    if not _MAC_RE.match(s):
        ctx.fail(path, f"{show(s)} is not a MAC address such as 'aa:bb:cc:dd:ee:ff'")
    return s


def check_interface(ctx: Ctx, path: str, value: Any, *, wildcard: bool = False) -> str:
    s = as_str(ctx, path, value)
    if wildcard and s == "*":
        return s
    if not INTERFACE_RE.match(s):
        ctx.fail(path, f"{show(s)} is not an interface name (1-15 of [a-zA-Z0-9_.-])")
    return s


def check_selector(ctx: Ctx, path: str, value: Any) -> str:
    """A selector expression, parsed by ``libcalico.selector`` (Calico's selector grammar)."""
    text = as_str(ctx, path, value)
    try:
        parse(text)
    except SelectorError as e:
        raise e.in_context(field=path, resource=ctx.ident) from None
    return text


def check_labels(ctx: Ctx, path: str, value: Any) -> dict[str, str]:
    labels = as_str_map(ctx, path, value)
    for k, v in labels.items():
        problem = qualified_name_problem(k)
        if problem:
            ctx.fail(join_path(path, k), f"label key {show(k)} is invalid: {problem}")
        problem = label_value_problem(v)
        if problem:
            ctx.fail(join_path(path, k), f"label value {show(v)} is invalid: {problem}")
    return labels


ANNOTATIONS_MAX_BYTES = 256 * 1024


def check_annotations(ctx: Ctx, path: str, value: Any) -> dict[str, str]:
    annotations = as_str_map(ctx, path, value)
    total = 0
    for k, v in annotations.items():
        problem = qualified_name_problem(k.lower())
        if problem:
            ctx.fail(join_path(path, k), f"annotation key {show(k)} is invalid: {problem}")
        total += len(k.encode()) + len(v.encode())
    if total > ANNOTATIONS_MAX_BYTES:
        ctx.fail(
            path, f"annotations total {total} bytes, more than the {ANNOTATIONS_MAX_BYTES} allowed"
        )
    return annotations
