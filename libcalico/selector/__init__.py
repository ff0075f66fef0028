"""Calico's label-selector language: parser, evaluator, canonical rendering and IP-set IDs.

``parse(text)`` returns an immutable, hashable ``Selector``; ``Selector.evaluate(labels)``
matches a label map; ``str(sel)``/``sel.canonical`` is Calico's canonical string and
``sel.unique_id`` the IP-set ID Calico derives from it (``s:`` + base64url-nopad(SHA-224 of
``"s:" + canonical``)). Behaviour follows ``libcalico-go/lib/selector`` so canonical strings and
IDs agree with Calico's.

The language::

    label == "v"    label != "v"    label in {"a", "b"}    label not in {"a", "b"}
    label contains "v"    label starts with "v"    label ends with "v"
    has(label)    all()    global()    !x    x && y    x || y    (x)

Labels are ``[A-Za-z0-9_./-]+`` (at most 512 characters); strings are ``"..."`` or ``'...'`` with
no escapes; ``!`` binds tighter than ``&&``, which binds tighter than ``||``; empty text is
``all()``.

Absent labels: ``==``, ``in``, ``contains``, ``starts with`` and ``ends with`` are false when
the label is absent; ``!=`` and ``not in`` are true (``a != "x"`` matches a label-set without
``a``); ``has(a)`` is presence.

``global()``: Calico's evaluator treats it exactly like ``all()`` (true for every label-set), and
so does ``evaluate`` here. Its documented meaning, "non-namespaced entities such as
GlobalNetworkSets and host endpoints", exists only in a rule's ``namespaceSelector``, which
Calico's rule conversion rewrites textually to ``!has(projectcalico.org/namespace)`` (and
``all()`` there to ``has(projectcalico.org/namespace)``) after prefixing labels with ``pcns.``.
``Selector.for_namespace_selector()`` performs that conversion on the tree.

Where this package departs from Calico, deliberately:

- ``!(!x)`` parses to ``x`` (Calico keeps a double negation and renders ``!!x``), so every
  canonical string re-parses to an equal tree;
- parentheses nest at most ``MAX_NESTING`` deep, in the text and in the canonical form;
- CR and LF count as whitespace as well as space and tab;
- labels longer than 512 characters are rejected (Calico's current tokenizer stopped checking);
- a non-string argument to ``parse`` is a ``SelectorError``, not a crash.

Errors are ``SelectorError`` (a ``libcalico.errors.ValidationError``) whose message says what was
expected and where: ``invalid selector 'a ==': expected a quoted string at position 4``.

For the calc graph's label index, ``index_hint()`` names one label (and optionally its allowed
values) every match must carry, ``required_labels()`` all such labels, and ``label_keys()``
every label the selector reads.
"""

from libcalico.selector.ast import MAX_LABEL_LENGTH
from libcalico.selector.error import SelectorError
from libcalico.selector.parser import (
    MAX_NESTING,
    PARSE_CACHE_SIZE,
    clear_parse_cache,
    parse,
    parse_tree,
)
from libcalico.selector.selector import (
    ALL,
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_PREFIX,
    SERVICE_ACCOUNT_LABEL_PREFIX,
    IndexHint,
    Selector,
    make_unique_id,
)

__all__ = [
    "ALL",
    "MAX_LABEL_LENGTH",
    "MAX_NESTING",
    "NAMESPACE_LABEL",
    "NAMESPACE_LABEL_PREFIX",
    "PARSE_CACHE_SIZE",
    "SERVICE_ACCOUNT_LABEL_PREFIX",
    "IndexHint",
    "Selector",
    "SelectorError",
    "clear_parse_cache",
    "make_unique_id",
    "parse",
    "parse_tree",
]
