"""The semantic search query language, compiled to parameterised SQL.

    query      := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" or_expr ")" | comparison
    comparison := operand OP operand          OP: < <= > >= = == != <>
    operand    := SPACE | "predicted" | NUMBER | STRING | CLASS

``SPACE`` is an indexed space name ``class.concept`` (its P_s), ``predicted`` the predicted class,
compared with ``=``, ``==``, ``!=`` or ``<>`` to a class name (bare or quoted). Keywords are
case-insensitive; names are not. A query compiles to parameterised SQL: column names come from
the index's own list of spaces, never from the query text, and every value is a parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._utils.errors import SxaiError

MAX_DEPTH = 32  # nesting of parentheses and "not": keeps Python and SQLite recursion bounded


MAX_COMPARISONS = 64


class QueryError(SxaiError):
    """A malformed search query; ``position`` is the offending token's 0-based offset."""

    def __init__(self, message: str, query: str, position: int) -> None:
        self.message = message
        self.query = query
        self.position = max(0, min(position, len(query)))
        shown = re.sub(r"\s", " ", query)  # a tab or newline would shift the caret
        super().__init__(
            f"{message} at position {self.position}\n  {shown}\n  {' ' * self.position}^"
        )


# ------------------------------------------------------------------------------------ tokens
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<string>"[^"]*"|'[^']*')
  | (?P<op><=|>=|==|!=|<>|<|>|=)
  | (?P<lparen>\()
  | (?P<rparen>\))
    """,
    re.VERBOSE,
)


_KEYWORDS = {"and", "or", "not"}


_SQL_OPS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "=": "=", "==": "=", "!=": "!=", "<>": "!="}


_EQUALITY = {"=", "==", "!=", "<>"}


@dataclass(frozen=True)
class Token:
    kind: str  # number, name, string, op, lparen, rparen, and, or, not, end
    text: str
    position: int


def tokenize(query: str) -> list[Token]:
    """Split a query into tokens; an unknown character raises :class:`QueryError`."""
    tokens: list[Token] = []
    position = 0
    while position < len(query):
        match = _TOKEN.match(query, position)
        if match is None:
            char = query[position]
            hint = " (unterminated string)" if char in "\"'" else ""
            raise QueryError(f"unexpected character {char!r}{hint}", query, position)
        kind = match.lastgroup
        text = match.group()
        if kind == "name" and text.lower() in _KEYWORDS:
            kind = text.lower()
        if kind != "ws":
            tokens.append(Token(kind, text, position))
        position = match.end()
    tokens.append(Token("end", "", len(query)))
    return tokens


# -------------------------------------------------------------------------------------- AST
@dataclass(frozen=True)
class Operand:
    kind: str  # space, predicted, number, string, name
    value: Any
    position: int


@dataclass(frozen=True)
class Comparison:
    left: Operand
    op: str
    right: Operand
    position: int


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and", "or"
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Comparison | BoolOp | Not


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens = tokenize(query)
        self.index = 0
        self.comparisons = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def error(self, expected: str, token: Token | None = None) -> QueryError:
        token = token or self.token
        found = "end of query" if token.kind == "end" else repr(token.text)
        return QueryError(f"expected {expected}, found {found}", self.query, token.position)

    def take(self) -> Token:
        token = self.token
        self.index += 1
        return token

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise QueryError("empty query", self.query, 0)
        node = self.or_expr(0)
        if self.token.kind != "end":
            raise self.error("'and', 'or' or the end of the query")
        return node

    def or_expr(self, depth: int) -> Node:
        items = [self.and_expr(depth)]
        while self.token.kind == "or":
            self.take()
            items.append(self.and_expr(depth))
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_expr(self, depth: int) -> Node:
        items = [self.not_expr(depth)]
        while self.token.kind == "and":
            self.take()
            items.append(self.not_expr(depth))
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def not_expr(self, depth: int) -> Node:
        if depth >= MAX_DEPTH:
            raise QueryError(
                f"query nested more than {MAX_DEPTH} levels deep", self.query, self.token.position
            )
        token = self.token
        if token.kind == "not":
            self.take()
            return Not(self.not_expr(depth + 1))
        if token.kind == "lparen":
            self.take()
            node = self.or_expr(depth + 1)
            if self.token.kind != "rparen":
                raise self.error(f"')' to close the '(' at position {token.position}")
            self.take()
            return node
        return self.comparison()

    def operand(self) -> Operand:
        token = self.token
        if token.kind == "number":
            self.take()
            return Operand("number", float(token.text), token.position)
        if token.kind == "string":
            self.take()
            return Operand("string", token.text[1:-1], token.position)
        if token.kind == "name":
            self.take()
            if token.text == "predicted":
                return Operand("predicted", None, token.position)
            kind = "space" if "." in token.text else "name"
            return Operand(kind, token.text, token.position)
        raise self.error("a space name (class.concept), 'predicted', a number or '('")

    def comparison(self) -> Comparison:
        left = self.operand()
        if self.token.kind != "op":
            raise self.error("a comparison operator (< <= > >= = != )")
        op = self.take()
        right = self.operand()
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise QueryError(
                f"more than {MAX_COMPARISONS} comparisons in one query", self.query, left.position
            )
        return Comparison(left, op.text, right, op.position)


def parse_query(query: str) -> Node:
    """The syntax tree of a query (names are not checked yet: see :func:`compile_query`)."""
    if not isinstance(query, str):
        raise TypeError(f"a query is a string, not {type(query).__name__}")
    return _Parser(query).parse()


# ---------------------------------------------------------------------------------- compile
@dataclass(frozen=True)
class CompiledQuery:
    where: str  # an SQL boolean expression with ? placeholders
    params: tuple[Any, ...]
    spaces: tuple[str, ...]  # the space names the query refers to, in order of appearance
    # (space, descending) of the first comparison on a space: matches come most extreme first
    order: tuple[str, bool] | None = None


def compile_query(query: str, spaces: dict[str, str], classes: Sequence[str]) -> CompiledQuery:
    """Parse ``query`` and translate it into a parameterised SQL ``WHERE`` expression.

    Args:
        spaces: space name -> SQL column (the whitelist; nothing else reaches the SQL text).
        classes: the class names ``predicted`` may be compared with.
    """
    return _Compiler(query, spaces, classes).compile(parse_query(query))


class _Compiler:
    """One query's translation: the SQL text, its parameters, the spaces used and the order."""

    def __init__(self, query: str, spaces: dict[str, str], classes: Sequence[str]) -> None:
        self.query, self.spaces, self.classes = query, spaces, classes
        self.params: list[Any] = []
        self.used: list[str] = []
        self.order: tuple[str, bool] | None = None

    def compile(self, tree: Node) -> CompiledQuery:
        where = self.emit(tree)
        return CompiledQuery(where, tuple(self.params), tuple(self.used), self.order)

    def error(self, message: str, position: int) -> QueryError:
        return QueryError(message, self.query, position)

    def unknown_name(self, operand: Operand) -> QueryError:
        known = ", ".join(sorted(self.spaces)) or "none"
        if operand.kind == "space":
            return self.error(
                f"unknown space {operand.value!r} (indexed spaces: {known})", operand.position
            )
        return self.error(
            f"unknown name {operand.value!r}: use a space name class.concept "
            f"(indexed: {known}) or 'predicted'",
            operand.position,
        )

    def value_sql(self, operand: Operand) -> str:
        if operand.kind == "space":
            if operand.value not in self.spaces:
                raise self.unknown_name(operand)
            if operand.value not in self.used:
                self.used.append(operand.value)
            return self.spaces[operand.value]
        if operand.kind == "number":
            if math.isnan(operand.value):
                raise self.error("not a number", operand.position)
            self.params.append(operand.value)
            return "?"
        if operand.kind == "name":
            raise self.unknown_name(operand)
        raise self.error("a class name can only be compared with 'predicted'", operand.position)

    def predicted_sql(self, node: Comparison, other: Operand) -> str:
        if node.op not in _EQUALITY:
            raise self.error(
                f"'predicted' is compared with = or != only, not {node.op!r}", node.position
            )
        if other.kind not in ("string", "name"):
            raise self.error("'predicted' is compared with a class name", other.position)
        if other.value not in self.classes:
            raise self.error(
                f"unknown class {other.value!r} (classes: {', '.join(self.classes)})",
                other.position,
            )
        self.params.append(other.value)
        return f"predicted {_SQL_OPS[node.op]} ?"

    def note_order(self, node: Comparison, negated: bool) -> None:
        """The first comparison on a space sets the order: most extreme matches first."""
        if self.order is not None or "space" not in (node.left.kind, node.right.kind):
            return
        space_left = node.left.kind == "space"
        key = node.left.value if space_left else node.right.value
        upward = (
            node.op in (">", ">=", "=", "==", "!=", "<>") if space_left else node.op in ("<", "<=")
        )
        self.order = (key, upward != negated)

    def emit(self, node: Node, negated: bool = False) -> str:
        if isinstance(node, BoolOp):
            return (
                "("
                + f" {node.op.upper()} ".join(self.emit(item, negated) for item in node.items)
                + ")"
            )
        if isinstance(node, Not):
            return f"(NOT {self.emit(node.item, not negated)})"
        return self.comparison_sql(node, negated)

    def comparison_sql(self, node: Comparison, negated: bool) -> str:
        left, right = node.left, node.right
        if left.kind == "predicted" and right.kind == "predicted":
            raise self.error("compare 'predicted' with a class name", right.position)
        if left.kind == "predicted":
            return self.predicted_sql(node, right)
        if right.kind == "predicted":
            return self.predicted_sql(node, left)
        if "space" not in (left.kind, right.kind) and left.kind == right.kind == "number":
            raise self.error("a comparison needs at least one space name", left.position)
        sql = f"{self.value_sql(left)} {_SQL_OPS[node.op]} {self.value_sql(right)}"
        self.note_order(node, negated)
        return sql
