"""Parse and evaluate the JQL subset of the development Jira without a server."""

from __future__ import annotations

import pytest

from b2cal.devservices.jql import (
    AndNode,
    Clause,
    JqlError,
    NotNode,
    OrderKey,
    OrNode,
    matches,
    parse_jql,
    tokenize,
)


def test_tokenize_quotes_and_operators() -> None:
    tokens = tokenize("labels != \"a b\" and key in (CAL-1,'CAL-2')")
    assert [(token.kind, token.text) for token in tokens] == [
        ("word", "labels"),
        ("operator", "!="),
        ("string", "a b"),
        ("word", "and"),
        ("word", "key"),
        ("word", "in"),
        ("(", "("),
        ("word", "CAL-1"),
        (",", ","),
        ("string", "CAL-2"),
        (")", ")"),
    ]


def test_escaped_quote_inside_string() -> None:
    query = parse_jql(r'labels = "say \"hi\""')
    assert query.where == Clause("labels", "=", ('say "hi"',))


def test_and_binds_tighter_than_or() -> None:
    query = parse_jql("labels = a OR labels = b AND status = Open")
    assert query.where == OrNode(
        (
            Clause("labels", "=", ("a",)),
            AndNode((Clause("labels", "=", ("b",)), Clause("status", "=", ("Open",)))),
        )
    )


def test_parentheses_and_not() -> None:
    query = parse_jql("NOT (labels = a or labels = b)")
    assert query.where == NotNode(OrNode((Clause("labels", "=", ("a",)), Clause("labels", "=", ("b",)))))


def test_field_aliases_and_case() -> None:
    query = parse_jql("IssueKey IN (CAL-1) AND StatusCategory NOT IN (Done)")
    assert query.where == AndNode(
        (Clause("key", "in", ("CAL-1",)), Clause("statusCategory", "not in", ("Done",)))
    )


def test_order_by_only() -> None:
    query = parse_jql("ORDER BY created DESC, key")
    assert query.where is None
    assert query.order_by == (OrderKey("created", True), OrderKey("key", False))


def test_is_empty() -> None:
    assert parse_jql("assignee is EMPTY").where == Clause("assignee", "is", ())
    assert parse_jql("assignee IS NOT null").where == Clause("assignee", "is not", ())


@pytest.mark.parametrize(
    "text",
    [
        "labels",
        "labels =",
        "labels = a b",
        "labels in a",
        "labels in (a b)",
        "(labels = a",
        "labels > 3",
        "summary ~ x",
        "labels = a ORDER key",
        'labels = "open',
        "assignee = currentUser()",
        "assignee is someone",
    ],
)
def test_invalid_queries_raise(text: str) -> None:
    with pytest.raises(JqlError):
        parse_jql(text)


def test_matches_follows_jira_semantics_for_empty_fields() -> None:
    values = {"labels": set(), "status": {"Open"}}

    def field_values(field: str) -> set[str]:
        return values[field]

    def resolve(field: str, value: str) -> set[str]:
        return {value}

    assert matches(parse_jql("labels != a").where, field_values, resolve) is False
    assert matches(parse_jql("labels not in (a)").where, field_values, resolve) is False
    assert matches(parse_jql("labels is EMPTY").where, field_values, resolve) is True
    assert matches(parse_jql("status != Closed").where, field_values, resolve) is True
    assert matches(parse_jql("NOT labels = a").where, field_values, resolve) is True
    assert matches(None, field_values, resolve) is True
