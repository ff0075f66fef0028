"""Table tests for the selector language: evaluation, rendering, IP-set IDs, errors, hints."""

from __future__ import annotations

import base64
import copy
import hashlib
import pickle

import pytest

from libcalico.errors import ValidationError
from libcalico.selector import (
    ALL,
    MAX_NESTING,
    Selector,
    SelectorError,
    clear_parse_cache,
    parse,
    parse_tree,
)
from libcalico.selector import ast as sa

# --- evaluation -----------------------------------------------------------------------------

# (selector, labels, expected)
EVALUATION = [
    # ==: presence required
    ('a == "x"', {"a": "x"}, True),
    ('a == "x"', {"a": "x", "b": "y"}, True),
    ('a == "x"', {"a": "y"}, False),
    ('a == "x"', {}, False),
    ("a == ''", {"a": ""}, True),
    ("a == ''", {}, False),
    # !=: true when absent
    ('a != "x"', {}, True),
    ('a != "x"', {"a": "y"}, True),
    ('a != "x"', {"a": "x"}, False),
    # in / not in
    ('a in {"x", "y"}', {"a": "y"}, True),
    ('a in {"x", "y"}', {"a": "z"}, False),
    ('a in {"x", "y"}', {}, False),
    ("a in {}", {"a": ""}, False),
    ('a not in {"x", "y"}', {}, True),
    ('a not in {"x", "y"}', {"a": "z"}, True),
    ('a not in {"x", "y"}', {"a": "x"}, False),
    ("a not in {}", {}, True),
    ('a in {"\'", \'"\', "c"}', {"a": '"'}, True),
    ('a in {"\'", \'"\', "c"}', {"a": "'"}, True),
    # has
    ("has(a)", {"a": ""}, True),
    ("has(a)", {"b": "a"}, False),
    ("!has(a)", {"b": "a"}, True),
    ("!has(a)", {"a": "b"}, False),
    # contains / starts with / ends with: presence required
    ('a contains "b"', {"a": "abc"}, True),
    ('a contains "b"', {"a": "ac"}, False),
    ('a contains ""', {"a": ""}, True),
    ('a contains ""', {}, False),
    ('a starts with "ab"', {"a": "abc"}, True),
    ('a starts with "ab"', {"a": "cab"}, False),
    ('a starts with ""', {}, False),
    ('a ends with "bc"', {"a": "abc"}, True),
    ('a ends with "bc"', {"a": "bca"}, False),
    ('a ends with ""', {}, False),
    ('!a contains "b"', {}, True),
    # all(), global(), empty
    ("all()", {}, True),
    ("global()", {}, True),
    ("global()", {"projectcalico.org/namespace": "default"}, True),
    ("", {"a": "b"}, True),
    (" \t\r\n", {}, True),
    ("!all()", {}, False),
    # negation collapses by parity
    ("!!has(a)", {"a": "1"}, True),
    ("!!!has(a)", {"a": "1"}, False),
    ("! !! has(a)", {"a": "1"}, False),
    ('!a == "x"', {}, True),
    ('!a == "x"', {"a": "x"}, False),
    ("!(!has(a))", {"a": "1"}, True),
    # && and ||
    ('a == "1" && b == "2"', {"a": "1", "b": "2"}, True),
    ('a == "1" && b == "2"', {"a": "1"}, False),
    ('a == "1" || b == "2"', {"b": "2"}, True),
    ('a == "1" || b == "2"', {}, False),
    # precedence: ! > && > ||
    ('a == "1" || b == "2" && c == "3"', {"a": "1"}, True),
    ('(a == "1" || b == "2") && c == "3"', {"a": "1"}, False),
    ("!has(a) && has(b)", {"b": "1"}, True),
    ("!(has(a) && has(b))", {"a": "1"}, True),
    ("!has(a) || has(b)", {"a": "1"}, False),
    ("!(!has(a) || has(b))", {"a": "a"}, True),
    ("!(has(b) || !has(a))", {"a": "a"}, True),
    ("! a == 'a1' || ! b == 'b1'", {"a": "a1", "b": "b1"}, False),
    # context-sensitive keywords are labels where no operator can appear
    ('contains contains "contains"', {"contains": "xcontainsx"}, True),
    ('in in {"in"}', {"in": "in"}, True),
    ('has == "x" && all == "y"', {"has": "x", "all": "y"}, True),
    ('a notin{"x"}', {"a": "y"}, True),
    ('a startswith "x" && b endswith "y"', {"a": "xa", "b": "by"}, True),
    ('a starts  with "x"', {"a": "xa"}, True),
    ("has( calico/k8s_NS-.1/role )", {"calico/k8s_NS-.1/role": ""}, True),
    # no escapes: the string ends at the next quote of its kind
    ("a == 'x\"y'", {"a": 'x"y'}, True),
    ('a == "x\\"', {"a": "x\\"}, True),
    ("a == 'caf\u00e9 \u2603'", {"a": "caf\u00e9 \u2603"}, True),
]


@pytest.mark.parametrize(("text", "labels", "expected"), EVALUATION)
def test_evaluate(text: str, labels: dict[str, str], expected: bool) -> None:
    sel = parse(text)
    assert sel.evaluate(labels) is expected
    assert sel.matcher(labels) is expected
    # The canonical form means the same thing.
    assert parse(sel.canonical).evaluate(labels) is expected


# --- canonical rendering --------------------------------------------------------------------

CANONICAL = [
    ("", "all()"),
    (" all() ", "all()"),
    (" (all() )", "all()"),
    ("global( )", "global()"),
    ("a=='x'", 'a == "x"'),
    ("a!='x'", 'a != "x"'),
    ("has( b)", "has(b)"),
    ("a contains'x'", 'a contains "x"'),
    ("a startswith 'x'", 'a starts with "x"'),
    ("a endswith 'x'", 'a ends with "x"'),
    ('a == "\'"', 'a == "\'"'),
    ("a == '\"'", "a == '\"'"),
    ("a contains '\"'", "a contains '\"'"),
    ("a != '\"'", "a != '\"'"),
    # sets: sorted, de-duplicated, each value quoted on its own
    ('a in {"d", "a", "b"}', 'a in {"a", "b", "d"}'),
    ('a in {"z", "z", "x", "y", "x", "a"}', 'a in {"a", "x", "y", "z"}'),
    ("a not in {'b', '\"', 'a',}", 'a not in {\'"\', "a", "b"}'),
    ("a in { }", "a in {}"),
    # and/or always parenthesised, never flattened across parentheses
    ('a == "x" && has(b)', '(a == "x" && has(b))'),
    ("has(a) && has(b) && has(c)", "(has(a) && has(b) && has(c))"),
    ("(has(a) && has(b)) && has(c)", "((has(a) && has(b)) && has(c))"),
    ("has(a) || has(b) && has(c)", "(has(a) || (has(b) && has(c)))"),
    ("((has(a)))", "has(a)"),
    # negation: glued to its operand, collapsed by parity
    ("! (has( b)||! has(a ))", "!(has(b) || !has(a))"),
    ('! (a == "b"&&! c != "d")', '!(a == "b" && !c != "d")'),
    ("!!has(a)", "has(a)"),
    ("!(!has(a))", "has(a)"),
    ("!(!(has(a) && has(b)))", "(has(a) && has(b))"),
    ("!(k == 'v')", '!k == "v"'),
    (
        "!(!(k == 'v' && has(t) || all()) && (a in {'b', 'c'}))",
        '!(!((k == "v" && has(t)) || all()) && a in {"b", "c"})',
    ),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_canonical(text: str, canonical: str) -> None:
    sel = parse(text)
    assert sel.canonical == canonical
    assert str(sel) == canonical
    assert repr(sel) == f"Selector({canonical!r})"
    again = parse(canonical)
    assert again == sel
    assert again.canonical == canonical


# --- IP-set IDs -----------------------------------------------------------------------------


def _by_hand(canonical: str) -> str:
    """The rule from Calico's hash.MakeUniqueID, written out independently of the package."""
    digest = hashlib.sha224(b"s:" + canonical.encode("utf-8")).digest()
    return "s:" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


@pytest.mark.parametrize(
    ("text", "unique_id"),
    [
        # Values from Calico's own parser tests.
        ("", "s:5y5I3VdRZfDU01O--xXAPx2yxCQQqMf0M6IWug"),
        (" (all() )", "s:5y5I3VdRZfDU01O--xXAPx2yxCQQqMf0M6IWug"),
        ("! (has( b)||! has(a ))", "s:Iss0uCleLYv1GSv_pNm7hAO58kE9jAx1NKyG3Q"),
        ('! (a == "b"&&! c != "d")', "s:lh3haoY1ikTRkd4UZu0nWSaIBknYLPJLX16d-w"),
    ],
)
def test_unique_id_matches_calico(text: str, unique_id: str) -> None:
    assert parse(text).unique_id == unique_id


@pytest.mark.parametrize(
    "text",
    ["a == 'x' && has(b)", "role in {'db', 'api'}", "a == 'cr\u00e8me \u2603'", "a == '\"'"],
)
def test_unique_id_is_hash_of_canonical(text: str) -> None:
    sel = parse(text)
    assert sel.unique_id == _by_hand(sel.canonical)
    assert sel.unique_id.startswith("s:")
    assert len(sel.unique_id) == 2 + 38
    assert set(sel.unique_id[2:]) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )


def test_unique_id_ignores_spelling() -> None:
    assert parse("a=='x'&&has(b)").unique_id == parse('(a == "x" && has(b))').unique_id
    assert parse("a in {'y','x'}").unique_id == parse('a in {"x", "y", "x"}').unique_id
    assert parse("has(a) && has(b)").unique_id != parse("has(b) && has(a)").unique_id


# --- errors ---------------------------------------------------------------------------------

ERRORS = [
    ("a ==", "expected a quoted string at position 4"),
    ("b == b", "expected a quoted string at position 5"),
    ("'b1' == b", "expected a label, has(...), all(), global(), '!' or '(' at position 0"),
    (
        "a",
        "expected an operator (==, !=, in, not in, contains, starts with, ends with) "
        "after label 'a' at position 1",
    ),
    ("!", "expected a label, has(...), all(), global(), '!' or '(' at position 1"),
    ('foo == "bar" &', "expected '&&' at position 13"),
    ('foo == "bar" |', "expected '||' at position 13"),
    ('foo in {"", ||', "expected a quoted string or '}' at position 12"),
    ('foo in ""', "expected '{' to open a set of quoted strings at position 7"),
    ('a in {"x" "y"}', "expected ',' or '}' at position 10"),
    ('"FOO', 'expected a closing " for the string that starts at position 0'),
    ("'FOO\"", "expected a closing ' for the string that starts at position 0"),
    ('(a == "foo"', "expected '&&', '||' or ')' at position 11"),
    (")", "expected a label, has(...), all(), global(), '!' or '(' at position 0"),
    ("()", "expected a label, has(...), all(), global(), '!' or '(' at position 1"),
    (
        'a == "b" && %',
        "expected a label, has(...), all(), global(), '!' or '(', not '%' at position 12",
    ),
    ('a == "x" b', "expected '&&', '||' or the end of the selector at position 9"),
    ('a = "x"', "expected '==' at position 2"),
    ('a starts foo "x"', "expected 'with' after 'starts' at position 9"),
    ('a not "x"', "expected 'in' after 'not' at position 6"),
    ("has()", "expected a label name inside has() at position 4"),
    ("has(a b)", "expected ')' to close has( at position 6"),
    ("all(x)", "expected ')' to close all( at position 4"),
    ("global(", "expected ')' to close global( at position 7"),
    ("has(foo) &&", "expected a label, has(...), all(), global(), '!' or '(' at position 11"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_error_messages(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse(text)
    assert str(info.value) == f"invalid selector '{text}': {message}"
    assert info.value.selector == text
    assert info.value.position == int(message.rsplit(" ", 1)[1])


def test_error_is_a_validation_error_with_field() -> None:
    with pytest.raises(ValidationError) as info:
        parse("a ==", field="spec.selector", resource="NetworkPolicy(prod/web)")
    err = info.value
    assert isinstance(err, SelectorError)
    assert str(err) == (
        "NetworkPolicy(prod/web) spec.selector: "
        "invalid selector 'a ==': expected a quoted string at position 4"
    )
    assert err.grpc_code == "INVALID_ARGUMENT"
    assert err.details()["field"] == "spec.selector"
    # The cached failure path gives the same answer the second time.
    with pytest.raises(SelectorError, match=r"^spec\.selector: invalid selector"):
        parse("a ==", field="spec.selector")


def test_limits() -> None:
    parse("a" * 512 + ' == "x"')
    with pytest.raises(SelectorError, match="at most 512 characters at position 0"):
        parse("a" * 513 + ' == "x"')
    with pytest.raises(SelectorError, match="at most 512 characters at position 4"):
        parse("has(" + "a" * 513 + ")")
    deepest = "(" * MAX_NESTING + "has(a)" + ")" * MAX_NESTING
    assert parse(deepest) == parse("has(a)")
    with pytest.raises(SelectorError, match=f"at most {MAX_NESTING} levels"):
        parse("(" + deepest + ")")


def test_nesting_limit_counts_canonical_parentheses() -> None:
    # Each level adds an Or and an And, two pairs of parentheses in the canonical form, and a
    # Not: the deepest trees the parser accepts, which must also compile and round-trip.
    level = '!(a == "x" || b == "y" && '
    levels = MAX_NESTING // 2
    sel = parse(level * levels + 'c == "z"' + ")" * levels)
    assert sel.canonical.endswith('c == "z"' + ")" * MAX_NESTING)
    assert parse(sel.canonical) == sel
    # Every Or is false without labels, so every Not is true; a == "x" makes the outermost Or true.
    assert sel.evaluate({}) is True
    assert sel.evaluate({"a": "x"}) is False
    with pytest.raises(SelectorError, match=f"at most {MAX_NESTING} levels"):
        parse(level * (levels + 1) + 'c == "z"' + ")" * (levels + 1))
    # Chains without parentheses in the text still count.
    assert parse("has(a) || has(b) && has(c)").canonical == "(has(a) || (has(b) && has(c)))"


def test_non_string_and_surrogates() -> None:
    with pytest.raises(SelectorError, match="expected a string, not NoneType"):
        parse(None)  # type: ignore[arg-type]
    with pytest.raises(SelectorError, match="lone surrogates at position 6"):
        parse('a == "\ud800"')


# --- value semantics ------------------------------------------------------------------------


def test_equality_hash_and_cache() -> None:
    a, b = parse("a=='x'"), parse('a == "x"')
    assert a == b and hash(a) == hash(b) and a is not b
    assert a is parse("a=='x'")  # memoised by text
    assert a != parse('a == "y"')
    assert a != 'a == "x"'
    assert len({a, b, parse("has(a)")}) == 2
    assert parse("") is ALL and parse("all()") is ALL
    assert parse("global()") != ALL
    clear_parse_cache()
    assert parse("a=='x'") == a


def test_immutable_and_copyable() -> None:
    sel = parse("has(a) && b in {'1', '2'}")
    with pytest.raises(AttributeError):
        sel._canonical = "all()"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        sel.foo = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        del sel._root
    assert copy.copy(sel) is sel and copy.deepcopy(sel) is sel
    again = pickle.loads(pickle.dumps(sel))
    assert again == sel and again.evaluate({"a": "", "b": "2"})


def test_tree_invariants() -> None:
    assert parse_tree('x in {"b", "a", "b"}') == sa.In("x", ("a", "b"))
    assert sa.In("x", ("b", "a", "b")).values == ("a", "b")
    assert sa.negate(sa.Not(sa.Has("a"))) == sa.Has("a")
    for build in (
        lambda: sa.Has(""),
        lambda: sa.Has("a b"),
        lambda: sa.Eq("a", "'\""),
        lambda: sa.And((sa.Has("a"),)),
        lambda: sa.Or(()),
        lambda: sa.Not(sa.Not(sa.Has("a"))),
    ):
        with pytest.raises(ValueError):
            build()


def _reference(node: sa.Node, labels: dict[str, str]) -> bool:
    match node:
        case sa.Not(operand=operand):
            return not _reference(operand, labels)
        case sa.And(operands=operands):
            return all(_reference(o, labels) for o in operands)
        case sa.Or(operands=operands):
            return any(_reference(o, labels) for o in operands)
        case sa.Has(label=label):
            return label in labels
        case sa.Eq(label=label, value=value):
            return labels.get(label) == value
    raise AssertionError(node)


def test_deep_code_built_tree_is_split_and_correct() -> None:
    node: sa.Node = sa.Has("a")
    for i in range(300):
        if i % 3 == 0:
            node = sa.Or((node, sa.Has("c")))
        elif i % 3 == 1:
            node = sa.And((sa.Not(sa.Has("b")), node))
        else:
            node = sa.negate(node)
    sel = Selector(node)
    for labels in ({}, {"a": "1"}, {"b": "1"}, {"c": "1"}, {"a": "1", "c": "1"}):
        assert sel.evaluate(labels) is _reference(node, labels)


# --- index hints and label keys -------------------------------------------------------------

HINTS: list[tuple[str, tuple[str, frozenset[str] | None] | None]] = [
    ("all()", None),
    ("global()", None),
    ('a != "x"', None),
    ('a not in {"x"}', None),
    ("!has(a)", None),
    ('a == "x" || b == "y"', None),
    ('a == "x" || all()', None),
    ('a == "x"', ("a", frozenset({"x"}))),
    ('a in {"x", "y"}', ("a", frozenset({"x", "y"}))),
    ("has(a)", ("a", None)),
    ('a contains "x"', ("a", None)),
    ('has(a) && b == "y"', ("b", frozenset({"y"}))),
    ('a in {"1", "2"} && b in {"3"}', ("b", frozenset({"3"}))),
    ('a in {"1", "2"} && b in {"3", "4"}', ("a", frozenset({"1", "2"}))),
    ("has(b) && has(a)", ("a", None)),
    ('a in {"1", "2"} && a in {"2", "3"}', ("a", frozenset({"2"}))),
    ('a == "1" && a == "2"', ("a", frozenset())),
    ('a == "x" || a == "y"', ("a", frozenset({"x", "y"}))),
    ('a == "x" || has(a)', ("a", None)),
    ('(a == "x" && has(b)) || (a == "y" && has(c))', ("a", frozenset({"x", "y"}))),
    ('!(a != "x")', ("a", frozenset({"x"}))),
    ('!(a != "x" || b not in {"1"})', ("a", frozenset({"x"}))),
    ('!(a == "x" && has(b))', None),
]


@pytest.mark.parametrize(("text", "hint"), HINTS)
def test_index_hint(text: str, hint: tuple[str, frozenset[str] | None] | None) -> None:
    assert parse(text).index_hint() == hint


def test_label_keys_and_required_labels() -> None:
    sel = parse('a == "x" && (has(b) || c not in {"1"}) && !d contains "q" && all()')
    assert sel.label_keys() == frozenset({"a", "b", "c", "d"})
    assert sel.required_labels() == {"a": frozenset({"x"})}
    assert ALL.label_keys() == frozenset()


# --- rewrites -------------------------------------------------------------------------------


def test_with_label_prefix() -> None:
    sel = parse("!(!(k == 'v' && has(t) || all()) && (a in {'b', 'c'}))")
    assert sel.with_label_prefix("visited/").canonical == (
        '!(!((visited/k == "v" && has(visited/t)) || all()) && visited/a in {"b", "c"})'
    )
    assert parse("k not in {'v'}").with_label_prefix("pcsa.").canonical == 'pcsa.k not in {"v"}'


@pytest.mark.parametrize(
    ("namespace_selector", "endpoint_selector"),
    [
        ("all()", "has(projectcalico.org/namespace)"),
        ("", "has(projectcalico.org/namespace)"),
        ("global()", "!has(projectcalico.org/namespace)"),
        ("!global()", "has(projectcalico.org/namespace)"),
        ("env == 'prod'", 'pcns.env == "prod"'),
        ("env == 'prod' || global()", '(pcns.env == "prod" || !has(projectcalico.org/namespace))'),
    ],
)
def test_for_namespace_selector(namespace_selector: str, endpoint_selector: str) -> None:
    converted = parse(namespace_selector).for_namespace_selector()
    assert converted.canonical == endpoint_selector
    assert converted == parse(endpoint_selector)


def test_global_matches_non_namespaced_only_after_conversion() -> None:
    host_endpoint = {"role": "gateway"}
    workload = {"role": "gateway", "projectcalico.org/namespace": "prod"}
    sel = parse("global()")
    assert sel.evaluate(host_endpoint) and sel.evaluate(workload)
    scoped = sel.for_namespace_selector()
    assert scoped.evaluate(host_endpoint) and not scoped.evaluate(workload)
