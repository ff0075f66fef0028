"""The demo's matrices: what each step implies, printed and read back."""

from __future__ import annotations

from libcalico.lab.demo import REFS, expected, format_matrix, parse_matrices


def test_steps_imply_the_documented_cells() -> None:
    assert all(expected("open").values())
    deny = expected("deny")
    assert deny[("ops/admin", "shop/web")] is False and deny[("shop/web", "ops/admin")] is True
    allow = expected("allow")
    assert [pair for pair, ok in allow.items() if ok != deny[pair]] == [("shop/web", "shop/api")]
    assert len(allow) == len(REFS) * (len(REFS) - 1)


def test_printed_matrices_read_back() -> None:
    text = "\n".join(["noise", format_matrix(expected("deny")), "", "more noise",
                      format_matrix(expected("allow"))])
    assert parse_matrices(text) == [expected("deny"), expected("allow")]
    first = format_matrix(expected("open")).splitlines()
    assert first[0].split() == ["from", "\\", "to", *REFS]
    assert first[1].split()[:2] == ["shop/web", "·"]
