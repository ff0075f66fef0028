"""Selector syntax tree: immutable nodes, Calico's canonical rendering, and tree analyses.

Nodes are frozen, slotted dataclasses, so equality and hashing are structural for free and a
tree can be shared between threads and cached without copying. The node set mirrors Calico's
parser (``libcalico-go/lib/selector/parser``) one for one, including its shape rules, because
the canonical string, and so the IP-set ID, is a function of the shape:

- a parenthesised expression is not a node; ``(x)`` parses to ``x``;
- ``&&`` and ``||`` chains are n-ary and never flattened across parentheses, so
  ``(a && b) && c`` is ``And(And(a, b), c)`` and renders as ``((a && b) && c)``;
- leading ``!`` operators collapse by parity, so ``!!x`` is ``x``.

Every tree is kept in *parser normal form*: the form ``parse(render(tree))`` gives back. The
constructors check the invariants that make that true (labels are identifiers, no value holds
both quote characters, ``And``/``Or`` have two or more operands, ``Not`` never wraps ``Not``, set
values are sorted and unique) so a tree built in code cannot render to text that parses to a
different tree. ``negate`` is the way to build a negation: it cancels a double one.

Rendering follows Calico's ``String()`` exactly: ``label == "v"``, ``has(label)``, ``!`` glued to
its operand, ``(a && b)`` / ``(a || b)`` always parenthesised, ``label in {"a", "b"}`` with the set
sorted, and each value in double quotes unless it contains a double quote, then single quotes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

MAX_LABEL_LENGTH = 512
"""Longest label name the grammar accepts (Calico's ``[a-zA-Z0-9_./-]{1,512}``)."""

LABEL_RE = re.compile(r"[A-Za-z0-9_./-]+")
"""A label identifier; the character class is spelled out because ``\\w`` admits Unicode."""


def check_label(label: str) -> None:
    if not isinstance(label, str) or LABEL_RE.fullmatch(label) is None:
        raise ValueError(f"not a selector label: {label!r}")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"selector label longer than {MAX_LABEL_LENGTH} characters")


def _check_value(value: str) -> None:
    # There are no escapes, so a value with both quote characters cannot be written down.
    if not isinstance(value, str) or ('"' in value and "'" in value):
        raise ValueError(f"not a selector value: {value!r}")


def quote(value: str) -> str:
    """Quote a value the way Calico renders it."""
    return f"'{value}'" if '"' in value else f'"{value}"'


@dataclass(frozen=True, slots=True)
class All:
    """``all()``: matches everything. The empty selector parses to this."""


@dataclass(frozen=True, slots=True)
class Global:
    """``global()``: matches everything when evaluated, as in Calico.

    Its meaning ("non-namespaced entities only") exists only inside a rule's
    ``namespaceSelector``, where ``for_namespace_selector`` rewrites it to
    ``!has(projectcalico.org/namespace)``; see the package docstring.
    """


@dataclass(frozen=True, slots=True)
class Has:
    """``has(label)``: the label is present, whatever its value."""

    label: str

    def __post_init__(self) -> None:
        check_label(self.label)


@dataclass(frozen=True, slots=True)
class _LabelValue:
    """A label compared with one quoted value; subclasses differ only in the operator."""

    label: str
    value: str

    op: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_label(self.label)
        _check_value(self.value)


@dataclass(frozen=True, slots=True)
class Eq(_LabelValue):
    """``label == "v"``: present and equal."""

    op: ClassVar[str] = " == "


@dataclass(frozen=True, slots=True)
class Ne(_LabelValue):
    """``label != "v"``: absent, or present with another value."""

    op: ClassVar[str] = " != "


@dataclass(frozen=True, slots=True)
class Contains(_LabelValue):
    """``label contains "v"``: present and the value has ``v`` as a substring."""

    op: ClassVar[str] = " contains "


@dataclass(frozen=True, slots=True)
class StartsWith(_LabelValue):
    """``label starts with "v"``: present and the value starts with ``v``."""

    op: ClassVar[str] = " starts with "


@dataclass(frozen=True, slots=True)
class EndsWith(_LabelValue):
    """``label ends with "v"``: present and the value ends with ``v``."""

    op: ClassVar[str] = " ends with "


@dataclass(frozen=True, slots=True)
class _LabelSet:
    """A label tested against a set of values, held sorted and de-duplicated as Calico does."""

    label: str
    values: tuple[str, ...]

    op: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_label(self.label)
        for value in self.values:
            _check_value(value)
        # Sorting by code point is the same order as Go's byte-wise sort of the UTF-8 text.
        normal = tuple(sorted(set(self.values)))
        if normal != self.values:
            object.__setattr__(self, "values", normal)


@dataclass(frozen=True, slots=True)
class In(_LabelSet):
    """``label in {"a", "b"}``: present and one of the values."""

    op: ClassVar[str] = " in "


@dataclass(frozen=True, slots=True)
class NotIn(_LabelSet):
    """``label not in {"a", "b"}``: absent, or present with none of the values."""

    op: ClassVar[str] = " not in "


@dataclass(frozen=True, slots=True)
class Not:
    """``!x``. Build with ``negate`` so that a double negation cancels."""

    operand: Node

    def __post_init__(self) -> None:
        if isinstance(self.operand, Not):
            raise ValueError("Not(Not(x)) is not in normal form; use negate()")


@dataclass(frozen=True, slots=True)
class And:
    """``(a && b && ...)``: two or more operands, evaluated left to right, short-circuit."""

    operands: tuple[Node, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise ValueError("And needs at least two operands")


@dataclass(frozen=True, slots=True)
class Or:
    """``(a || b || ...)``: two or more operands, evaluated left to right, short-circuit."""

    operands: tuple[Node, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise ValueError("Or needs at least two operands")


Node = All | Global | Has | Eq | Ne | Contains | StartsWith | EndsWith | In | NotIn | Not | And | Or
"""Any selector tree node."""

LabelNode = Has | Eq | Ne | Contains | StartsWith | EndsWith | In | NotIn
"""The nodes that read a label."""


def negate(node: Node) -> Node:
    """``!node`` in normal form: negating a negation gives back its operand."""
    return node.operand if isinstance(node, Not) else Not(node)


# --- rendering ------------------------------------------------------------------------------


def render(node: Node) -> str:
    """Calico's canonical string for a tree (``Selector.String()`` in Go)."""
    parts: list[str] = []
    _render_into(node, parts)
    return "".join(parts)


def _render_into(node: Node, parts: list[str]) -> None:
    match node:
        case _LabelValue(label=label, value=value):
            parts += (label, node.op, quote(value))
        case _LabelSet(label=label, values=values):
            parts += (label, node.op, "{", ", ".join(quote(v) for v in values), "}")
        case Has(label=label):
            parts += ("has(", label, ")")
        case Not(operand=operand):
            parts.append("!")
            _render_into(operand, parts)
        case And(operands=operands) | Or(operands=operands):
            joiner = " && " if isinstance(node, And) else " || "
            parts.append("(")
            for i, operand in enumerate(operands):
                if i:
                    parts.append(joiner)
                _render_into(operand, parts)
            parts.append(")")
        case All():
            parts.append("all()")
        case Global():
            parts.append("global()")


# --- analyses -------------------------------------------------------------------------------


def walk(node: Node) -> list[Node]:
    """Every node of the tree, parents before children."""
    out: list[Node] = []
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        out.append(current)
        match current:
            case Not(operand=operand):
                stack.append(operand)
            case And(operands=operands) | Or(operands=operands):
                stack.extend(reversed(operands))
    return out


def label_keys(node: Node) -> frozenset[str]:
    """Every label name the tree reads."""
    return frozenset(n.label for n in walk(node) if isinstance(n, LabelNode))


def depth(node: Node) -> int:
    """Height of the tree; a leaf has depth 1."""
    match node:
        case Not(operand=operand):
            return 1 + depth(operand)
        case And(operands=operands) | Or(operands=operands):
            return 1 + max(depth(o) for o in operands)
    return 1


Restrictions = dict[str, frozenset[str] | None]
"""Label -> values it must have (``None``: any value) for a label-set to possibly match."""


def required_labels(node: Node, positive: bool = True) -> Restrictions:
    """Labels every matching label-set must carry, with the values they are confined to.

    ``positive=False`` analyses ``!node`` instead, pushing the negation inward (De Morgan), so
    ``!(a != "x")`` still yields ``a`` confined to ``{"x"}``. The result is sound, not complete:
    a label missing from it may still be required. An empty frozenset means no label-set can
    match (``a == "x" && a == "y"``).

    Same rules as Calico's ``LabelRestrictions`` for the positive case: ``&&`` merges its
    operands' requirements and intersects value sets; ``||`` keeps only labels every operand
    requires and unions their value sets (any value if one operand allows any).
    """
    match node:
        case Eq(label=label, value=value):
            return {label: frozenset((value,))} if positive else {}
        case Ne(label=label, value=value):
            return {} if positive else {label: frozenset((value,))}
        case In(label=label, values=values):
            return {label: frozenset(values)} if positive else {}
        case NotIn(label=label, values=values):
            return {} if positive else {label: frozenset(values)}
        case (
            Has(label=label)
            | Contains(label=label)
            | StartsWith(label=label)
            | EndsWith(label=label)
        ):
            return {label: None} if positive else {}
        case Not(operand=operand):
            return required_labels(operand, not positive)
        case And(operands=operands) | Or(operands=operands):
            # !(a && b) is (!a || !b) and !(a || b) is (!a && !b).
            conjunction = isinstance(node, And) == positive
            parts = [required_labels(o, positive) for o in operands]
            return _merge_all(parts) if conjunction else _merge_any(parts)
    return {}  # all(), global(): no requirement, and their negation matches nothing anyway.


def _merge_all(parts: list[Restrictions]) -> Restrictions:
    out: Restrictions = {}
    for part in parts:
        for label, values in part.items():
            if label not in out:
                out[label] = values
            elif values is not None:
                have = out[label]
                out[label] = values if have is None else have & values
    return out


def _merge_any(parts: list[Restrictions]) -> Restrictions:
    out = dict(parts[0])
    for part in parts[1:]:
        for label in list(out):
            if label not in part:
                del out[label]
                continue
            have, values = out[label], part[label]
            out[label] = None if have is None or values is None else have | values
    return out


# --- rewrites -------------------------------------------------------------------------------


def map_leaves(node: Node, fn: Callable[[Node], Node]) -> Node:
    """Rebuild the tree with every leaf replaced by ``fn(leaf)``, keeping normal form."""
    match node:
        case Not(operand=operand):
            return negate(map_leaves(operand, fn))
        case And(operands=operands):
            return And(tuple(map_leaves(o, fn) for o in operands))
        case Or(operands=operands):
            return Or(tuple(map_leaves(o, fn) for o in operands))
    return fn(node)


def prefix_labels(node: Node, prefix: str) -> Node:
    """The tree with ``prefix`` put in front of every label name (Calico's PrefixVisitor)."""

    def leaf(n: Node) -> Node:
        match n:
            case Has(label=label):
                return Has(prefix + label)
            case _LabelValue(label=label, value=value):
                return type(n)(prefix + label, value)
            case _LabelSet(label=label, values=values):
                return type(n)(prefix + label, values)
        return n

    return map_leaves(node, leaf)
