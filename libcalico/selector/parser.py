"""Selector parser: recursive descent over the token list, memoised by text.

Grammar (precedence ``!`` > ``&&`` > ``||``, as Calico's ``parser.go``)::

    selector   := <empty> | or_expr
    or_expr    := and_expr ("||" and_expr)*
    and_expr   := operation ("&&" operation)*
    operation  := "!"* ( has(label) | all() | global() | "(" or_expr ")"
                       | label ("==" | "!=" | contains | starts with | ends with) string
                       | label ("in" | "not in") "{" [string ("," string)* [","]] "}" )

A one-element chain is its element, a parenthesised expression is its content, and the leading
``!`` operators of an operation cancel in pairs, so the tree has Calico's shape and renders to
Calico's canonical string. Unlike Calico, negating an already negated parenthesised expression,
``!(!x)``, also cancels (``negate``): Calico keeps both and renders ``!!x``, text which then
re-parses to ``x``; cancelling makes every canonical string re-parse to the same tree.

Parentheses may nest ``MAX_NESTING`` deep, counting both those in the text and those the
canonical form would have (one pair per ``&&`` or ``||`` chain, so ``a || b && c`` nests two
deep): the second count makes every accepted selector's canonical string acceptable too. Calico
has no limit, but real selectors nest a few levels, and the limit keeps Python's recursion and
bytecode compiler far from their own limits on any input, so that ``parse`` raises
``SelectorError`` and nothing else.

``parse`` memoises by text in a bounded LRU: the same selectors arrive again and again (every
policy update re-sends its rules), and a cache hit also shares the compiled matcher.
"""

from __future__ import annotations

import functools

from libcalico.selector import ast
from libcalico.selector.error import SelectorError
from libcalico.selector.selector import ALL, Selector
from libcalico.selector.tokenizer import OPERATORS_AFTER_LABEL, Tok, Token, tokenize

MAX_NESTING = 64
"""Deepest parenthesis nesting ``parse`` accepts, in the text and in its canonical form."""

PARSE_CACHE_SIZE = 16384
"""Distinct selector texts ``parse`` remembers; a few MB at typical selector sizes."""

_VALUE_OPS: dict[Tok, type[ast.Eq | ast.Ne | ast.Contains | ast.StartsWith | ast.EndsWith]] = {
    Tok.EQ: ast.Eq,
    Tok.NE: ast.Ne,
    Tok.CONTAINS: ast.Contains,
    Tok.STARTS_WITH: ast.StartsWith,
    Tok.ENDS_WITH: ast.EndsWith,
}

_OPERAND = "a label, has(...), all(), global(), '!' or '('"
_TOO_DEEP = f"expected at most {MAX_NESTING} levels of nested parentheses"


def parse(text: str, *, field: str = "", resource: str = "") -> Selector:
    """Parse a selector; empty or all-whitespace text is ``all()``.

    Raises ``SelectorError`` (a ``ValidationError``) for any text that is not a selector, and
    for a non-string argument; ``field`` and ``resource`` prefix its message, e.g.
    ``spec.selector: invalid selector 'a ==': expected a quoted string at position 4``.
    """
    if not isinstance(text, str):
        raise SelectorError(
            repr(text),
            f"expected a string, not {type(text).__name__}",
            0,
            field=field,
            resource=resource,
        )
    try:
        return _parse_cached(text)
    except SelectorError as err:
        if field or resource:
            raise err.in_context(field=field, resource=resource) from None
        raise


def clear_parse_cache() -> None:
    """Forget every memoised selector (for tests and benchmarks)."""
    _parse_cached.cache_clear()


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_cached(text: str) -> Selector:
    root = parse_tree(text)
    return ALL if isinstance(root, ast.All) else Selector(root)


def parse_tree(text: str) -> ast.Node:
    """Parse ``text`` to a syntax tree without building (or caching) a ``Selector``."""
    _check_encodable(text)
    return _Parser(text, tokenize(text)).parse()


def _check_encodable(text: str) -> None:
    # A lone surrogate can reach us from a careless decoder; it cannot be hashed as UTF-8 for
    # the IP-set ID, so reject it here rather than fail later in the calc graph.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise SelectorError(text, "expected text without lone surrogates", err.start) from None


class _Parser:
    __slots__ = ("_i", "_text", "_tokens")

    def __init__(self, text: str, tokens: list[Token]) -> None:
        self._text = text
        self._tokens = tokens
        self._i = 0

    def parse(self) -> ast.Node:
        if self._peek().kind is Tok.EOF:
            return ast.All()
        node, _ = self._or_expr(0)
        self._expect_next(Tok.EOF, "'&&', '||' or the end of the selector")
        return node

    # --- token access --------------------------------------------------------------------

    def _peek(self) -> Token:
        return self._tokens[self._i]

    def _next(self) -> Token:
        token = self._tokens[self._i]
        if token.kind is not Tok.EOF:  # EOF is sticky, so lookahead never runs off the end
            self._i += 1
        return token

    def _fail(self, expected: str, token: Token) -> SelectorError:
        problem = f"expected {expected}"
        if token.kind is Tok.INVALID:
            problem += f", not {token.value!r}"
        return SelectorError(self._text, problem, token.pos)

    def _expect_next(self, kind: Tok, expected: str) -> Token:
        token = self._next()
        if token.kind is not kind:
            raise self._fail(expected, token)
        return token

    # --- grammar -------------------------------------------------------------------------

    # Each rule returns its node and its nesting: the number of && / || nodes on the deepest
    # path, which is how deep the canonical form's parentheses nest. ``parens`` counts the
    # parentheses open in the text, which bounds the recursion.

    def _or_expr(self, parens: int) -> tuple[ast.Node, int]:
        start = self._peek().pos
        first = self._and_expr(parens)
        if self._peek().kind is not Tok.OR:
            return first
        operands = [first]
        while self._peek().kind is Tok.OR:
            self._next()
            operands.append(self._and_expr(parens))
        return ast.Or(tuple(n for n, _ in operands)), self._nest(operands, start)

    def _and_expr(self, parens: int) -> tuple[ast.Node, int]:
        start = self._peek().pos
        first = self._operation(parens)
        if self._peek().kind is not Tok.AND:
            return first
        operands = [first]
        while self._peek().kind is Tok.AND:
            self._next()
            operands.append(self._operation(parens))
        return ast.And(tuple(n for n, _ in operands)), self._nest(operands, start)

    def _nest(self, operands: list[tuple[ast.Node, int]], start: int) -> int:
        nest = 1 + max(n for _, n in operands)
        if nest > MAX_NESTING:
            raise SelectorError(self._text, _TOO_DEEP, start)
        return nest

    def _operation(self, parens: int) -> tuple[ast.Node, int]:
        negated = False
        while self._peek().kind is Tok.NOT:
            self._next()
            negated = not negated
        token = self._next()
        node: ast.Node
        nest = 0
        match token.kind:
            case Tok.HAS:
                node = ast.Has(token.value)
            case Tok.ALL:
                node = ast.All()
            case Tok.GLOBAL:
                node = ast.Global()
            case Tok.LABEL:
                node = self._label_operation(token.value)
            case Tok.LPAREN:
                if parens >= MAX_NESTING:
                    raise SelectorError(self._text, _TOO_DEEP, token.pos)
                node, nest = self._or_expr(parens + 1)
                self._expect_next(Tok.RPAREN, "'&&', '||' or ')'")
            case _:
                raise self._fail(_OPERAND, token)
        return (ast.negate(node) if negated else node), nest

    def _label_operation(self, label: str) -> ast.Node:
        op = self._next()
        value_op = _VALUE_OPS.get(op.kind)
        if value_op is not None:
            value = self._expect_next(Tok.STRING, "a quoted string").value
            return value_op(label, value)
        if op.kind is Tok.IN or op.kind is Tok.NOT_IN:
            values = self._set_literal()
            return ast.In(label, values) if op.kind is Tok.IN else ast.NotIn(label, values)
        raise self._fail(f"an operator ({OPERATORS_AFTER_LABEL}) after label '{label}'", op)

    def _set_literal(self) -> tuple[str, ...]:
        self._expect_next(Tok.LBRACE, "'{' to open a set of quoted strings")
        values: list[str] = []
        # A trailing comma is allowed, as in Calico: after ',' either a string or '}' may come.
        while True:
            token = self._next()
            if token.kind is Tok.RBRACE:
                return tuple(values)
            if token.kind is not Tok.STRING:
                raise self._fail("a quoted string or '}'", token)
            values.append(token.value)
            token = self._next()
            if token.kind is Tok.RBRACE:
                return tuple(values)
            if token.kind is not Tok.COMMA:
                raise self._fail("',' or '}'", token)
