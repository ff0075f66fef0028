"""Selector tokenizer: text to a list of tokens, each with its character position.

The lexing rules are Calico's (``libcalico-go/lib/selector/tokenizer``), including its
context sensitivity: the words ``in``, ``not in``, ``contains``, ``starts with`` and ``ends with``
are operators only directly after a label, and anywhere else they are label names, so
``contains contains "x"`` is a valid selector. Operator words are matched as prefixes, so
``a notin{"x"}`` and ``a startswith "x"`` lex like their spaced forms, as they do in Calico.
``has(``, ``all(`` and ``global(`` are keywords only when the parenthesis follows at once.

Whitespace is space, tab, CR and LF; Calico accepts only space and tab, but a selector written
as a YAML block scalar ends in a newline and rejecting it would help nobody.

Strings are ``"..."`` or ``'...'`` with no escapes: a string ends at the next quote of its kind.
Errors are ``SelectorError`` with the position of the offending character.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from libcalico.selector.ast import LABEL_RE, MAX_LABEL_LENGTH
from libcalico.selector.error import SelectorError


class Tok(enum.Enum):
    """Token kinds; each value is how an error message names the token."""

    LABEL = "a label"
    STRING = "a quoted string"
    LBRACE = "'{'"
    RBRACE = "'}'"
    COMMA = "','"
    EQ = "'=='"
    NE = "'!='"
    IN = "'in'"
    NOT_IN = "'not in'"
    CONTAINS = "'contains'"
    STARTS_WITH = "'starts with'"
    ENDS_WITH = "'ends with'"
    NOT = "'!'"
    HAS = "has(...)"
    ALL = "all()"
    GLOBAL = "global()"
    LPAREN = "'('"
    RPAREN = "')'"
    AND = "'&&'"
    OR = "'||'"
    EOF = "the end of the selector"
    INVALID = "a character that cannot start a token"


class Token(NamedTuple):
    kind: Tok
    value: str  # label name, string contents, or has()'s label; "" otherwise
    pos: int  # 0-based character offset of the token's first character


WHITESPACE = frozenset(" \t\r\n")

_SINGLE = {"(": Tok.LPAREN, ")": Tok.RPAREN, "{": Tok.LBRACE, "}": Tok.RBRACE, ",": Tok.COMMA}
_DOUBLE = {"=": Tok.EQ, "&": Tok.AND, "|": Tok.OR}

OPERATORS_AFTER_LABEL = "==, !=, in, not in, contains, starts with, ends with"


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, always ending with one ``EOF`` token.

    A character that cannot start a token becomes an ``INVALID`` token followed by ``EOF``, so
    the parser reports what it expected at that point rather than the tokenizer guessing.
    """
    tokens: list[Token] = []
    n = len(text)
    i = 0
    while True:
        i = _skip_ws(text, i)
        if i >= n:
            tokens.append(Token(Tok.EOF, "", n))
            return tokens
        c = text[i]
        if c in _SINGLE:
            tokens.append(Token(_SINGLE[c], "", i))
            i += 1
        elif c == '"' or c == "'":
            end = text.find(c, i + 1)
            if end < 0:
                raise SelectorError(text, f"expected a closing {c} for the string that starts", i)
            tokens.append(Token(Tok.STRING, text[i + 1 : end], i))
            i = end + 1
        elif c in _DOUBLE:
            if not text.startswith(c + c, i):
                raise SelectorError(text, f"expected {_DOUBLE[c].value}", i)
            tokens.append(Token(_DOUBLE[c], "", i))
            i += 2
        elif c == "!":
            if text.startswith("!=", i):
                tokens.append(Token(Tok.NE, "", i))
                i += 2
            else:
                tokens.append(Token(Tok.NOT, "", i))
                i += 1
        elif tokens and tokens[-1].kind is Tok.LABEL:
            kind, end = _operator_word(text, i, tokens[-1].value)
            tokens.append(Token(kind, "", i))
            i = end
        else:
            end = _keyword_or_label(text, i, tokens)
            if end < 0:
                tokens.append(Token(Tok.INVALID, c, i))
                tokens.append(Token(Tok.EOF, "", n))
                return tokens
            i = end


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in WHITESPACE:
        i += 1
    return i


def _operator_word(text: str, i: int, label: str) -> tuple[Tok, int]:
    """Lex the operator word that must follow ``label`` at ``i``; return its kind and end."""
    if text.startswith("contains", i):
        return Tok.CONTAINS, i + len("contains")
    for first, second, kind in (
        ("starts", "with", Tok.STARTS_WITH),
        ("ends", "with", Tok.ENDS_WITH),
        ("not", "in", Tok.NOT_IN),
    ):
        if text.startswith(first, i):
            j = _skip_ws(text, i + len(first))
            if not text.startswith(second, j):
                raise SelectorError(text, f"expected '{second}' after '{first}'", j)
            return kind, j + len(second)
    if text.startswith("in", i):
        return Tok.IN, i + len("in")
    raise SelectorError(
        text, f"expected an operator ({OPERATORS_AFTER_LABEL}) after label '{label}'", i
    )


def _keyword_or_label(text: str, i: int, tokens: list[Token]) -> int:
    """Lex ``has(label)``, ``all()``, ``global()`` or a label at ``i``.

    Appends the token and returns the offset after it, or -1 if no token starts at ``i``.
    """
    if text.startswith("has(", i):
        j = _skip_ws(text, i + len("has("))
        label = _label_at(text, j)
        if not label:
            raise SelectorError(text, "expected a label name inside has()", j)
        j = _skip_ws(text, j + len(label))
        if not text.startswith(")", j):
            raise SelectorError(text, "expected ')' to close has(", j)
        tokens.append(Token(Tok.HAS, label, i))
        return j + 1
    for word, kind in (("all(", Tok.ALL), ("global(", Tok.GLOBAL)):
        if text.startswith(word, i):
            j = _skip_ws(text, i + len(word))
            if not text.startswith(")", j):
                raise SelectorError(text, f"expected ')' to close {word}", j)
            tokens.append(Token(kind, "", i))
            return j + 1
    label = _label_at(text, i)
    if not label:
        return -1
    tokens.append(Token(Tok.LABEL, label, i))
    return i + len(label)


def _label_at(text: str, i: int) -> str:
    """The label identifier starting at ``i`` ("" if none); too long a label is an error."""
    match = LABEL_RE.match(text, i)
    if match is None:
        return ""
    if match.end() - i > MAX_LABEL_LENGTH:
        raise SelectorError(text, f"expected a label of at most {MAX_LABEL_LENGTH} characters", i)
    return match.group()
