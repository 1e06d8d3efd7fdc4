"""Parse and evaluate the subset of JQL that the development Jira supports.

Supported: clauses ``field = value``, ``!=``, ``in (...)``, ``not in (...)``, ``is EMPTY`` and
``is not EMPTY``; ``AND``, ``OR``, ``NOT`` and parentheses; and a trailing
``ORDER BY field [ASC|DESC], ...``. Keywords and field names are case-insensitive, values may be
bare words or quoted with ``"`` or ``'``. Everything else raises :class:`JqlError`, whose message
the service returns with HTTP 400, as Jira does for invalid JQL.

Matching follows Jira: ``!=`` and ``not in`` never match an issue whose field is empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: JQL field names (lower case) and the canonical field each one means.
FIELD_ALIASES: dict[str, str] = {
    "key": "key",
    "issuekey": "key",
    "id": "key",
    "labels": "labels",
    "project": "project",
    "statuscategory": "statusCategory",
    "status": "status",
    "assignee": "assignee",
    "reporter": "reporter",
    "issuetype": "issuetype",
    "type": "issuetype",
    "parent": "parent",
    "component": "component",
}

#: Fields that ``ORDER BY`` accepts (lower case) and the canonical field each one means.
ORDER_FIELDS: dict[str, str] = {"key": "key", "issuekey": "key", "created": "created", "updated": "updated"}

_SUPPORTED_OPERATORS = "=, !=, in, not in, is EMPTY, is not EMPTY"
_OPERATOR_CHARS = "=!~<>"
_SPECIAL_CHARS = "(),\"'" + _OPERATOR_CHARS


class JqlError(ValueError):
    """A JQL query that is invalid or outside the supported subset."""


@dataclass(frozen=True)
class Token:
    """One lexical unit of a query: a word or quoted string, an operator or punctuation."""

    kind: str  # "word", "string", "operator", "(", ")" or ","
    text: str
    position: int


@dataclass(frozen=True)
class Clause:
    """A comparison of one field with values; ``values`` is empty for the ``is EMPTY`` operators."""

    field: str
    operator: str  # "=", "!=", "in", "not in", "is" or "is not"
    values: tuple[str, ...]


@dataclass(frozen=True)
class AndNode:
    """A conjunction of sub-queries."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class OrNode:
    """A disjunction of sub-queries."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class NotNode:
    """A negated sub-query."""

    part: Node


Node = Clause | AndNode | OrNode | NotNode


@dataclass(frozen=True)
class OrderKey:
    """One ``ORDER BY`` field with its direction."""

    field: str
    descending: bool = False


@dataclass(frozen=True)
class Query:
    """A parsed query: the condition (``None`` matches every issue) and the sort order."""

    where: Node | None
    order_by: tuple[OrderKey, ...] = ()


def tokenize(text: str) -> list[Token]:
    """Split a JQL query into tokens."""
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
        elif char in "(),":
            tokens.append(Token(char, char, position))
            position += 1
        elif char in "\"'":
            value, position = _read_quoted(text, position)
            tokens.append(Token("string", value, position))
        elif char in _OPERATOR_CHARS:
            start = position
            while position < len(text) and text[position] in _OPERATOR_CHARS:
                position += 1
            tokens.append(Token("operator", text[start:position], start))
        else:
            start = position
            while (
                position < len(text) and not text[position].isspace() and text[position] not in _SPECIAL_CHARS
            ):
                position += 1
            tokens.append(Token("word", text[start:position], start))
    return tokens


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    position = start + 1
    characters: list[str] = []
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text):
            characters.append(text[position + 1])
            position += 2
        elif char == quote:
            return "".join(characters), position + 1
        else:
            characters.append(char)
            position += 1
    raise JqlError(
        f"Error in the JQL Query: the quoted string starting at character {start + 1} is not closed."
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    def peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def next(self, expected: str) -> Token:
        token = self.peek()
        if token is None:
            raise JqlError(f"Error in the JQL Query: expected {expected} but the query ended.")
        self.index += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "word" and token.text.lower() in words

    def expect_keyword(self, word: str) -> None:
        token = self.next(f"'{word.upper()}'")
        if token.kind != "word" or token.text.lower() != word:
            raise self.unexpected(token, f"'{word.upper()}'")

    def unexpected(self, token: Token, expected: str) -> JqlError:
        return JqlError(
            f"Error in the JQL Query: expected {expected} at character {token.position + 1} "
            f"but found {token.text!r}."
        )

    def parse(self) -> Query:
        where: Node | None = None
        if self.peek() is not None and not self.at_keyword("order"):
            where = self.parse_or()
        order_by: tuple[OrderKey, ...] = ()
        if self.at_keyword("order"):
            self.index += 1
            self.expect_keyword("by")
            order_by = self.parse_order_by()
        token = self.peek()
        if token is not None:
            raise self.unexpected(token, "AND, OR or ORDER BY")
        return Query(where, order_by)

    def parse_or(self) -> Node:
        parts = [self.parse_and()]
        while self.at_keyword("or"):
            self.index += 1
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else OrNode(tuple(parts))

    def parse_and(self) -> Node:
        parts = [self.parse_not()]
        while self.at_keyword("and"):
            self.index += 1
            parts.append(self.parse_not())
        return parts[0] if len(parts) == 1 else AndNode(tuple(parts))

    def parse_not(self) -> Node:
        if self.at_keyword("not"):
            self.index += 1
            return NotNode(self.parse_not())
        token = self.peek()
        if token is not None and token.kind == "(":
            self.index += 1
            node = self.parse_or()
            closing = self.next("')'")
            if closing.kind != ")":
                raise self.unexpected(closing, "')'")
            return node
        return self.parse_clause()

    def parse_clause(self) -> Clause:
        token = self.next("a field name")
        if token.kind not in ("word", "string"):
            raise self.unexpected(token, "a field name")
        field = FIELD_ALIASES.get(token.text.lower())
        if field is None:
            supported = ", ".join(sorted(set(FIELD_ALIASES.values())))
            raise JqlError(
                f"Error in the JQL Query: field {token.text!r} is not supported by the development Jira; "
                f"supported fields: {supported}."
            )
        operator = self.parse_operator()
        if operator in ("is", "is not"):
            value = self.next("EMPTY")
            if value.kind != "word" or value.text.lower() not in ("empty", "null"):
                raise self.unexpected(value, "EMPTY or NULL")
            return Clause(field, operator, ())
        if operator in ("in", "not in"):
            return Clause(field, operator, self.parse_list())
        return Clause(field, operator, (self.parse_value(),))

    def parse_operator(self) -> str:
        token = self.next("an operator")
        if token.kind == "operator":
            if token.text in ("=", "!="):
                return token.text
            raise JqlError(
                f"Error in the JQL Query: operator {token.text!r} is not supported by the development Jira; "
                f"supported operators: {_SUPPORTED_OPERATORS}."
            )
        word = token.text.lower() if token.kind == "word" else ""
        if word == "in":
            return "in"
        if word == "not":
            self.expect_keyword("in")
            return "not in"
        if word == "is":
            if self.at_keyword("not"):
                self.index += 1
                return "is not"
            return "is"
        raise self.unexpected(token, f"an operator ({_SUPPORTED_OPERATORS})")

    def parse_value(self) -> str:
        token = self.next("a value")
        if token.kind not in ("word", "string"):
            raise self.unexpected(token, "a value")
        following = self.peek()
        if token.kind == "word" and following is not None and following.kind == "(":
            raise JqlError(
                f"Error in the JQL Query: function {token.text}() is not supported by the development Jira; "
                "use literal values."
            )
        return token.text

    def parse_list(self) -> tuple[str, ...]:
        opening = self.next("'('")
        if opening.kind != "(":
            raise self.unexpected(opening, "'(' after IN")
        values = [self.parse_value()]
        while True:
            token = self.next("',' or ')'")
            if token.kind == ")":
                return tuple(values)
            if token.kind != ",":
                raise self.unexpected(token, "',' or ')'")
            values.append(self.parse_value())

    def parse_order_by(self) -> tuple[OrderKey, ...]:
        keys = []
        while True:
            token = self.next("a field to order by")
            field = ORDER_FIELDS.get(token.text.lower()) if token.kind in ("word", "string") else None
            if field is None:
                supported = ", ".join(sorted(ORDER_FIELDS))
                raise JqlError(
                    f"Error in the JQL Query: ORDER BY {token.text!r} is not supported by the development "
                    f"Jira; supported: {supported}."
                )
            descending = False
            if self.at_keyword("asc", "desc"):
                descending = self.next("ASC or DESC").text.lower() == "desc"
            keys.append(OrderKey(field, descending))
            separator = self.peek()
            if separator is None or separator.kind != ",":
                return tuple(keys)
            self.index += 1


def parse_jql(text: str) -> Query:
    """Parse a JQL query; an empty query matches every issue."""
    return _Parser(text).parse()


def iter_clauses(node: Node | None) -> Iterator[Clause]:
    """Yield every clause of a parsed condition."""
    if node is None:
        return
    if isinstance(node, Clause):
        yield node
    elif isinstance(node, NotNode):
        yield from iter_clauses(node.part)
    else:
        for part in node.parts:
            yield from iter_clauses(part)


def matches(
    node: Node | None,
    field_values: Callable[[str], set[str]],
    resolve: Callable[[str, str], set[str]],
) -> bool:
    """Return whether an issue matches a parsed condition.

    :param node: the parsed condition; ``None`` matches everything
    :param field_values: returns the issue's canonical values for a canonical field name
    :param resolve: maps a JQL value of a field to the canonical values it stands for
    """
    if node is None:
        return True
    if isinstance(node, AndNode):
        return all(matches(part, field_values, resolve) for part in node.parts)
    if isinstance(node, OrNode):
        return any(matches(part, field_values, resolve) for part in node.parts)
    if isinstance(node, NotNode):
        return not matches(node.part, field_values, resolve)

    present = field_values(node.field)
    if node.operator == "is":
        return not present
    if node.operator == "is not":
        return bool(present)
    requested: set[str] = set()
    for value in node.values:
        requested |= resolve(node.field, value)
    if node.operator in ("=", "in"):
        return bool(present & requested)
    return bool(present) and not present & requested
