"""``Selector``: a parsed selector as an immutable value.

A ``Selector`` wraps a syntax tree in parser normal form (see ``ast``) and derives from it, once:
the canonical string (which is also the hash key), Calico's IP-set ID, and on first use a
compiled matcher. Equality is structural (equal trees), which for normal-form trees is the same
as equal canonical strings, so hashing the canonical string is consistent with ``__eq__`` and
costs nothing per lookup.

Objects are shared freely: ``parse`` hands the same instance to every caller with the same text,
so nothing about a ``Selector`` may change after construction. The one lazily filled slot, the
compiled matcher, is a pure function of the tree; two threads racing to fill it store equivalent
functions.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any, NoReturn

from libcalico.selector import ast
from libcalico.selector.compiler import Matcher, compile_matcher

NAMESPACE_LABEL = "projectcalico.org/namespace"
"""Synthetic label every namespaced endpoint carries: its namespace's name."""

NAMESPACE_LABEL_PREFIX = "pcns."
"""Prefix of the synthetic labels an endpoint inherits from its namespace's labels."""

SERVICE_ACCOUNT_LABEL_PREFIX = "pcsa."
"""Prefix of the synthetic labels an endpoint inherits from its service account's labels."""

IndexHint = tuple[str, frozenset[str] | None]


def make_unique_id(prefix: str, content: str) -> str:
    """Calico's ``hash.MakeUniqueID``: ``prefix:`` + base64url-nopad(SHA-224(``prefix:content``)).

    The prefix is hashed too, so IDs of different kinds never collide even for equal content.
    SHA-224's 28 bytes encode to 38 characters.
    """
    digest = hashlib.sha224(f"{prefix}:{content}".encode()).digest()
    return f"{prefix}:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Selector:
    """A parsed label selector: ``parse(text)``, or ``Selector(tree)`` for a code-built tree.

    A code-built tree evaluates and renders at any depth, but its canonical string re-parses
    only if its ``&&``/``||`` chains nest at most ``MAX_NESTING`` deep, as parsed trees do.
    """

    __slots__ = ("_canonical", "_hash", "_match", "_root", "_unique_id")

    _root: ast.Node
    _canonical: str
    _hash: int
    _unique_id: str
    _match: Matcher | None

    def __init__(self, root: ast.Node) -> None:
        canonical = ast.render(root)
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "_canonical", canonical)
        object.__setattr__(self, "_hash", hash(canonical))
        object.__setattr__(self, "_unique_id", make_unique_id("s", canonical))
        object.__setattr__(self, "_match", None)

    # --- value semantics ---------------------------------------------------------------------

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Selector is immutable; cannot set {name}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Selector is immutable; cannot delete {name}")

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if not isinstance(other, Selector):
            return NotImplemented
        return self._hash == other._hash and self._root == other._root

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self._canonical

    def __repr__(self) -> str:
        return f"Selector({self._canonical!r})"

    def __reduce__(self) -> tuple[Any, tuple[ast.Node]]:
        # Rebuild from the tree: slots plus a __setattr__ that refuses are not picklable as is.
        return (Selector, (self._root,))

    def __copy__(self) -> Selector:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Selector:
        return self

    # --- derived values ----------------------------------------------------------------------

    @property
    def root(self) -> ast.Node:
        """The syntax tree, in parser normal form."""
        return self._root

    @property
    def canonical(self) -> str:
        """Calico's canonical rendering, e.g. ``(a == "x" && has(b))``; re-parses to ``self``."""
        return self._canonical

    @property
    def unique_id(self) -> str:
        """Calico's IP-set ID for this selector: ``s:`` + 38 characters of hash."""
        return self._unique_id

    # --- evaluation --------------------------------------------------------------------------

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        """Whether a label-set matches. Absent labels: see the package docstring."""
        match = self._match
        if match is None:
            match = self._compile()
        return match(labels)

    @property
    def matcher(self) -> Matcher:
        """The compiled ``match(labels) -> bool`` itself, to skip a method call in tight loops."""
        match = self._match
        return match if match is not None else self._compile()

    def _compile(self) -> Matcher:
        name = self._canonical if len(self._canonical) <= 80 else self._canonical[:77] + "..."
        match = compile_matcher(self._root, name)
        object.__setattr__(self, "_match", match)
        return match

    # --- analysis for indexes ----------------------------------------------------------------

    def label_keys(self) -> frozenset[str]:
        """Every label name the selector reads."""
        return ast.label_keys(self._root)

    def required_labels(self) -> dict[str, frozenset[str] | None]:
        """Labels every matching label-set must carry, mapped to the values allowed (``None``:
        any value; empty: nothing can match). Sound but not complete; see ``ast.required_labels``.
        """
        return ast.required_labels(self._root)

    def index_hint(self) -> IndexHint | None:
        """One label a label index can file this selector under, or ``None`` to scan it always.

        Returns ``(key, values)``: every matching label-set has label ``key``, and when
        ``values`` is not ``None`` its value is one of ``values`` (an empty set means nothing
        matches). The most selective requirement wins: the smallest value set, then any
        presence-only requirement; ties go to the smallest key, so the hint is deterministic.
        ``None`` for selectors that can match label-sets sharing no label, e.g. ``all()``,
        ``a != "x"``, ``a == "x" || b == "y"``.
        """
        required = ast.required_labels(self._root)
        if not required:
            return None
        with_values = [(len(v), k) for k, v in required.items() if v is not None]
        if with_values:
            _, key = min(with_values)
            return key, required[key]
        return min(required), None

    # --- rewrites ----------------------------------------------------------------------------

    def with_label_prefix(self, prefix: str) -> Selector:
        """This selector with ``prefix`` in front of every label name (Calico's PrefixVisitor),
        as used for ``pcns.`` namespace and ``pcsa.`` service-account selectors."""
        return Selector(ast.prefix_labels(self._root, prefix))

    def for_namespace_selector(self) -> Selector:
        """Turn a rule's ``namespaceSelector`` into the equivalent selector over endpoints.

        As Calico's rule conversion (``updateprocessors.getEndpointSelector``) does: every label
        gets the ``pcns.`` prefix, ``all()`` ("every namespace") becomes
        ``has(projectcalico.org/namespace)`` and ``global()`` ("no namespace") becomes
        ``!has(projectcalico.org/namespace)``. Calico does the last two by text replacement on
        the rendered string; doing it on the tree gives the same canonical result except that a
        quoted value spelling ``all()`` is left alone.
        """
        in_a_namespace = ast.Has(NAMESPACE_LABEL)

        def leaf(node: ast.Node) -> ast.Node:
            if isinstance(node, ast.All):
                return in_a_namespace
            if isinstance(node, ast.Global):
                return ast.Not(in_a_namespace)
            return node

        prefixed = ast.prefix_labels(self._root, NAMESPACE_LABEL_PREFIX)
        return Selector(ast.map_leaves(prefixed, leaf))


ALL = Selector(ast.All())
"""``all()``, which is also what the empty selector parses to."""
