"""calicoctl's table, YAML and JSON layouts (``libcalico.cli.calicoctl.output``)."""

from __future__ import annotations

import json

import yaml
from hypothesis import given
from hypothesis import strategies as st

from libcalico.cli.calicoctl.output import (
    list_object,
    render_json,
    render_table,
    render_yaml,
    tabwrite,
)

WIDE = ["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR"]


def test_wide_ippool_table_matches_calico_reference_layout() -> None:
    # The reference's example (calico.md §9), with the trailing padding Go's tabwriter leaves
    # because calicoctl tab-terminates the last cell too, and the blank line after the table.
    text = render_table(
        WIDE,
        [["default-ipv4-ippool", "192.168.0.0/16", "true", "Always", "Never", "false", "false",
          "all()"]],
    )
    assert text == (
        "NAME                  CIDR             NAT    IPIPMODE   VXLANMODE   DISABLED   "
        "DISABLEBGPEXPORT   SELECTOR   \n"
        "default-ipv4-ippool   192.168.0.0/16   true   Always     Never       false      "
        "false              all()      \n"
        "\n"
    )
    reference = [  # copied from the reference, where trailing spaces are trimmed
        "NAME                  CIDR             NAT    IPIPMODE   VXLANMODE   DISABLED   "
        "DISABLEBGPEXPORT   SELECTOR",
        "default-ipv4-ippool   192.168.0.0/16   true   Always     Never       false      "
        "false              all()",
    ]
    assert [line.rstrip() for line in text.splitlines()[:2]] == reference


def test_minwidth_five_applies_to_short_columns() -> None:
    # "A"+3 would be 4 wide; minwidth 5 wins. "NAME"+3 = 7.
    assert render_table(["A", "NAME"], [["x", "y"]]) == "A    NAME   \nx    y      \n\n"


def test_empty_listing_prints_heading_and_blank_line() -> None:
    assert render_table(["NAME", "CIDR", "SELECTOR"], []) == "NAME   CIDR   SELECTOR   \n\n"


def test_cells_with_tabs_or_newlines_do_not_break_columns() -> None:
    text = render_table(["NAME", "X"], [["a\tb", "c\nd"]])
    assert text.splitlines()[1] == "a b    c d   "


def test_tabwriter_column_blocks_follow_go() -> None:
    # Column widths are computed per block of consecutive lines that have that column;
    # text after the last tab is not part of a column.
    text = "a\tbbbbbbbbb\tc\nxx\tyy\nlonglong\tz\t"
    assert tabwrite(text).split("\n") == [
        "a          bbbbbbbbb   c",
        "xx         yy",
        "longlong   z    ",
    ]
    # A line without tabs ends the block above it.
    assert tabwrite("a\tb\t\nplain\nccc\td\t").split("\n") == [
        "a    b    ",
        "plain",
        "ccc   d    ",
    ]


@given(st.lists(st.lists(st.text(alphabet="abcXYZ019-./ ", max_size=12), min_size=3, max_size=3),
                max_size=6))
def test_columns_align(rows: list[list[str]]) -> None:
    text = render_table(["NAME", "CIDR", "SELECTOR"], rows)
    lines = text.split("\n")
    assert lines[-2:] == ["", ""]
    body = lines[:-2]
    assert len(body) == len(rows) + 1
    # Every line has the same length and each column starts at the same offset.
    assert len({len(line) for line in body}) == 1
    widths = [max(5, max(len(r[i]) for r in [["NAME", "CIDR", "SELECTOR"], *rows]) + 3)
              for i in range(3)]
    for line, cells in zip(body, [["NAME", "CIDR", "SELECTOR"], *rows], strict=True):
        offset = 0
        for width, cell in zip(widths, cells, strict=True):
            assert line[offset:offset + width] == cell.ljust(width)
            offset += width


POOL = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "IPPool",
    "metadata": {"name": "default-ipv4-ippool", "resourceVersion": "12",
                 "labels": {"enabled": "true"}},
    "spec": {"cidr": "10.244.0.0/16", "blockSize": 24, "natOutgoing": True,
             "allowedUses": ["Workload", "Tunnel"], "nodeSelector": "all()",
             "peerSelector": 'route-reflector == "true"', "bang": "!x", "empty": "", "none": {}},
}


def test_yaml_is_sorted_block_style_with_go_quoting() -> None:
    assert render_yaml(POOL) == """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  labels:
    enabled: "true"
  name: default-ipv4-ippool
  resourceVersion: "12"
spec:
  allowedUses:
  - Workload
  - Tunnel
  bang: "!x"
  blockSize: 24
  cidr: 10.244.0.0/16
  empty: ""
  natOutgoing: true
  nodeSelector: all()
  none: {}
  peerSelector: route-reflector == "true"
"""


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=3),
    max_leaves=10,
))
def test_yaml_round_trips(value: object) -> None:
    assert yaml.safe_load(render_yaml(value)) == value


def test_list_object_and_json() -> None:
    listing = list_object("IPPool", [POOL], 42)
    assert listing["kind"] == "IPPoolList"
    assert listing["apiVersion"] == "projectcalico.org/v3"
    assert listing["metadata"] == {"resourceVersion": "42"}
    assert listing["items"] == [POOL]
    text = render_json(listing)
    assert text.endswith("}\n")
    assert text.splitlines()[1].startswith('  "')  # two-space indent
    assert json.loads(text) == listing
