"""The box tables calicoctl prints where Calico's Go code uses go-pretty's default style
(``calicoctl node status``, ``calicoctl ipam show``)::

    +----------+-----------------+-----------+
    | GROUPING |      CIDR       | IPS TOTAL |
    +----------+-----------------+-----------+
    | IP Pool  | 192.168.0.0/16  |     65536 |
    +----------+-----------------+-----------+

Headers are upper-cased and centred (an odd pad puts the extra space on the right); cells are
left-aligned unless their column is named in ``right``; one space of padding each side. A
table with no rows is the header and two closing rules, as go-pretty renders it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def box_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: Collection[int] = (),
) -> str:
    """Render ``rows`` under ``headers``; ``right`` holds the indexes of right-aligned columns."""
    heads = [h.upper() for h in headers]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(heads)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def centred(text: str, width: int) -> str:
        pad = width - len(text)
        return " " * (pad // 2) + text + " " * (pad - pad // 2)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    out = [rule, line([centred(h, w) for h, w in zip(heads, widths, strict=True)]), rule]
    for r in rows:
        out.append(
            line(
                [
                    c.rjust(w) if i in right else c.ljust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                ]
            )
        )
    out.append(rule)
    return "\n".join(out)
