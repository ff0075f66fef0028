"""Property tests for the selector language (hypothesis).

Trees are generated in parser normal form; a plain tree-walking interpreter written here is the
oracle for the compiled matcher.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libcalico.selector import Selector, SelectorError, parse
from libcalico.selector import ast as sa

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A small label and value pool makes generated label maps hit the selectors' terms often; the
# odd names exercise the grammar's corners (keywords as labels, every identifier character).
LABEL_POOL = ["a", "b", "in", "contains", "has", "all", "x.y/z-1_2", "projectcalico.org/namespace"]
VALUE_POOL = ["", "x", "xy", "yx", '"', "'", "a b", "\u00e9\u2603"]

labels_st = st.one_of(
    st.sampled_from(LABEL_POOL),
    st.from_regex(r"[A-Za-z0-9_./-]{1,12}", fullmatch=True),
)
values_st = st.one_of(
    st.sampled_from(VALUE_POOL),
    st.text(max_size=6).filter(lambda v: not ('"' in v and "'" in v)),
)

leaf_st: st.SearchStrategy[sa.Node] = st.one_of(
    st.builds(sa.All),
    st.builds(sa.Global),
    st.builds(sa.Has, labels_st),
    *(
        st.builds(cls, labels_st, values_st)
        for cls in (sa.Eq, sa.Ne, sa.Contains, sa.StartsWith, sa.EndsWith)
    ),
    *(
        st.builds(cls, labels_st, st.lists(values_st, max_size=4).map(tuple))
        for cls in (sa.In, sa.NotIn)
    ),
)


def _extend(children: st.SearchStrategy[sa.Node]) -> st.SearchStrategy[sa.Node]:
    many = st.lists(children, min_size=2, max_size=4).map(tuple)
    return st.one_of(children.map(sa.negate), many.map(sa.And), many.map(sa.Or))


tree_st = st.recursive(leaf_st, _extend, max_leaves=12)

label_map_st = st.dictionaries(
    st.sampled_from(LABEL_POOL), st.sampled_from(VALUE_POOL), max_size=len(LABEL_POOL)
)


def reference(node: sa.Node, labels: dict[str, str]) -> bool:
    """The semantics, spelled out: absent labels fail every test but != and not in."""
    match node:
        case sa.All() | sa.Global():
            return True
        case sa.Has(label=label):
            return label in labels
        case sa.Eq(label=label, value=value):
            return label in labels and labels[label] == value
        case sa.Ne(label=label, value=value):
            return label not in labels or labels[label] != value
        case sa.In(label=label, values=values):
            return label in labels and labels[label] in values
        case sa.NotIn(label=label, values=values):
            return label not in labels or labels[label] not in values
        case sa.Contains(label=label, value=value):
            return label in labels and value in labels[label]
        case sa.StartsWith(label=label, value=value):
            return label in labels and labels[label].startswith(value)
        case sa.EndsWith(label=label, value=value):
            return label in labels and labels[label].endswith(value)
        case sa.Not(operand=operand):
            return not reference(operand, labels)
        case sa.And(operands=operands):
            return all(reference(o, labels) for o in operands)
        case sa.Or(operands=operands):
            return any(reference(o, labels) for o in operands)
    raise AssertionError(node)


@SETTINGS
@given(tree=tree_st, label_maps=st.lists(label_map_st, min_size=1, max_size=5))
def test_canonical_round_trips_and_evaluates_identically(
    tree: sa.Node, label_maps: list[dict[str, str]]
) -> None:
    sel = Selector(tree)
    again = parse(sel.canonical)
    assert again.root == tree
    assert again == sel and hash(again) == hash(sel)
    assert again.canonical == sel.canonical
    assert again.unique_id == sel.unique_id
    for labels in label_maps:
        expected = reference(tree, labels)
        assert sel.evaluate(labels) is expected
        assert again.evaluate(labels) is expected


@SETTINGS
@given(tree=tree_st, label_maps=st.lists(label_map_st, min_size=1, max_size=8))
def test_index_hint_and_label_keys_are_sound(
    tree: sa.Node, label_maps: list[dict[str, str]]
) -> None:
    sel = Selector(tree)
    hint = sel.index_hint()
    keys = sel.label_keys()
    for labels in label_maps:
        matched = sel.evaluate(labels)
        if matched and hint is not None:
            key, values = hint
            assert key in labels
            assert values is None or labels[key] in values
        # Labels the selector does not read cannot change its answer.
        assert sel.evaluate({k: v for k, v in labels.items() if k in keys}) is matched


@SETTINGS
@given(text=st.text())
def test_any_text_parses_or_raises_selector_error(text: str) -> None:
    try:
        sel = parse(text)
    except SelectorError as err:
        assert 0 <= err.position <= len(text)
        return
    assert parse(sel.canonical) == sel


# Text assembled from the language's own pieces reaches far deeper into the parser than
# arbitrary characters do.
FRAGMENTS = [
    "a", "b", "in", "not", "contains", "starts", "ends", "with", "has(", "has(a)", "all()",
    "global()", "global(", "==", "!=", "=", "!", "&&", "||", "&", "|", "(", ")", "{", "}", ",",
    '"x"', "'y'", '"', "'", " ", "\t", "\n", "%", "\u00e9",
]  # fmt: skip


@SETTINGS
@given(pieces=st.lists(st.sampled_from(FRAGMENTS), max_size=16))
def test_token_soup_parses_or_raises_selector_error(pieces: list[str]) -> None:
    text = "".join(pieces)
    try:
        sel = parse(text)
    except SelectorError as err:
        assert 0 <= err.position <= len(text)
        assert str(err).startswith("invalid selector ")
        return
    assert parse(sel.canonical) == sel
