"""How ``calicoctl get`` prints: ps/wide tables, YAML and JSON, laid out as Calico's calicoctl does.

Tables
    calicoctl builds one Go template line per table row in which *every* cell, the last one
    included, is terminated by a tab, and feeds it to ``text/tabwriter`` with minwidth 5,
    tabwidth 1, padding 3, pad character space and no flags. Because the last cell is
    tab-terminated it belongs to a column too, so every line of the table carries the padding
    of its last column (trailing spaces), and a blank line follows each table. ``tabwrite``
    below is a port of tabwriter's column-block algorithm (cells are measured in characters,
    a column block is a run of consecutive lines that have a cell in that column, and a cell's
    column is padded to ``max(minwidth, widest cell + padding)``), so tables with ragged rows
    lay out as Go would lay them out as well.

YAML and JSON
    One resource prints as itself. A listing (``get <kind>`` with no names) prints Calico's list
    object: ``kind: <Kind>List`` with ``metadata.resourceVersion`` (the revision the list was
    read at) and ``items``. Several names print a bare sequence of resources. YAML keys are
    sorted and strings that would otherwise read back as another type are double-quoted, as
    Go's YAML writer does; JSON is indented by two spaces.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

API_VERSION = "projectcalico.org/v3"

# text/tabwriter.NewWriter(os.Stdout, 5, 1, 3, ' ', 0) in calicoctl's table printer.
MINWIDTH = 5
PADDING = 3


def tabwrite(text: str, *, minwidth: int = MINWIDTH, padding: int = PADDING) -> str:
    """Align tab-separated ``text`` as Go's ``text/tabwriter`` does with a space pad char.

    Cells are tab-terminated; text after the last tab of a line is not part of any column and
    is written as is. Lines are split on ``\\n``.
    """
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []
    _format(lines, 0, len(lines), [], minwidth, padding, out)
    return "\n".join(out)


def _format(
    lines: list[list[str]],
    line0: int,
    line1: int,
    widths: list[int],
    minwidth: int,
    padding: int,
    out: list[str],
) -> None:
    column = len(widths)
    this = line0
    while this < line1:
        if column >= len(lines[this]) - 1:
            this += 1
            continue
        # A cell exists in this column: lines before it are complete with the current widths.
        _write_lines(lines, line0, this, widths, out)
        line0 = this
        width = minwidth
        while this < line1 and column < len(lines[this]) - 1:
            width = max(width, len(lines[this][column]) + padding)
            this += 1
        widths.append(width)
        _format(lines, line0, this, widths, minwidth, padding, out)
        widths.pop()
        line0 = this
    _write_lines(lines, line0, line1, widths, out)


def _write_lines(
    lines: list[list[str]], line0: int, line1: int, widths: list[int], out: list[str]
) -> None:
    for cells in lines[line0:line1]:
        parts = []
        for j, cell in enumerate(cells):
            if j < len(widths):
                parts.append(cell.ljust(widths[j]))
            else:
                parts.append(cell)
        out.append("".join(parts))


def render_table(headings: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """One calicoctl table: heading line, one line per row, every cell tab-terminated, then a
    blank line. The result ends with ``\\n\\n``."""
    text_lines = ["".join(f"{h}\t" for h in headings)]
    for row in rows:
        text_lines.append("".join(f"{_one_line(c)}\t" for c in row))
    return tabwrite("\n".join(text_lines)) + "\n\n"


def _one_line(cell: str) -> str:
    # A tab or newline inside a value would break the column layout.
    return cell.replace("\t", " ").replace("\n", " ")


def list_object(
    kind: str, items: Sequence[Mapping[str, Any]], revision: int | str
) -> dict[str, Any]:
    """Calico's ``<Kind>List`` wrapper printed for a listing in YAML or JSON."""
    return {
        "apiVersion": API_VERSION,
        "kind": f"{kind}List",
        "metadata": {"resourceVersion": str(revision)},
        "items": [dict(i) for i in items],
    }


class _GoStyleDumper(yaml.SafeDumper):
    """Block style, sorted keys, sequences not indented under their key, and double quotes
    wherever a plain scalar is not possible (Go's writer never uses single quotes)."""

    def choose_scalar_style(self) -> str:
        style: str = super().choose_scalar_style()
        return '"' if style == "'" else style


def _implicit_tag(dumper: yaml.SafeDumper, value: str) -> str:
    tag: str = dumper.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    return tag


# YAML line breaks besides \n: a block scalar (or a plain one) would read them back as \n.
_OTHER_BREAKS = frozenset("\r\x85\u2028\u2029")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None
    if _OTHER_BREAKS.intersection(value):
        style = '"'
    elif "\n" in value:
        style = "|"
    elif value == "" or _implicit_tag(dumper, value) != "tag:yaml.org,2002:str":
        # "true", "123", "1.5", "null", "" ... must stay strings when read back.
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_GoStyleDumper.add_representer(str, _represent_str)


def render_yaml(obj: Any) -> str:
    text: str = yaml.dump(
        obj,
        Dumper=_GoStyleDumper,
        default_flow_style=False,
        sort_keys=True,
        allow_unicode=True,
        width=1 << 30,
    )
    return text


def render_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
