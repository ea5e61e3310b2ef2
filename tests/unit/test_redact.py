"""Passwords stay out of messages and logs: redacted DSNs, refused unparseable DSNs, scrubbed log lines."""

from __future__ import annotations

import json
import logging

import pytest

from bridge.observability import JsonFormatter, TextFormatter
from bridge.redact import dsn_problem, note_secrets_in, redacted_dsn, secrets_in


@pytest.mark.parametrize("dsn", [
    "postgresql://bridge:pw-0123456@db.example:5432/restaurant",
    "postgresql://bridge@db.example/restaurant?password=pw-0123456&sslpassword=pw-key-987",
    "host=db.example user=bridge password='pw-0123456' sslpassword=pw-key-987 dbname=restaurant",
    "postgresql://bridge:pw%2F0123456@db.example/restaurant",
])
def test_a_redacted_dsn_keeps_where_and_who_but_no_password(dsn: str) -> None:
    shown = redacted_dsn(dsn)
    assert "db.example" in shown and "bridge" in shown and "restaurant" in shown
    assert "pw" not in shown and "password" not in shown, shown


@pytest.mark.parametrize("dsn, kept", [
    ("bridge:pw-0123456@127.0.0.1:5432/restaurant", 'missing "="'),  # no scheme: libpq quotes the string
    ("postgresql://bridge:pw-0123456@[::1", "IPv6"),
    ("host=x password='pw-0123456", "unterminated quoted string"),
    ("postgresql://bridge:pw-0123456@h/db?bogus=1", '"bogus"'),  # what helps is kept
    ("bridge:pw 0123456@127.0.0.1", 'missing "="'),  # a space: no password pattern matches, the quote is cut
])
def test_an_unparseable_dsn_is_explained_without_its_password(dsn: str, kept: str) -> None:
    problem = dsn_problem(dsn)
    assert problem is not None and kept in problem, problem
    assert "pw-0123456" not in problem and "0123456" not in problem, problem


def test_a_parseable_dsn_has_no_problem() -> None:
    assert dsn_problem("postgresql://bridge:pw@127.0.0.1:1/db") is None
    assert dsn_problem("host=127.0.0.1 port=1") is None


def test_secrets_are_found_in_every_spelling() -> None:
    assert "p@ss/word" in secrets_in("postgresql://u:p%40ss%2Fword@h/db")
    assert "it's secret" in secrets_in(r"host=h password='it\'s secret'")
    assert "k3y-value" in secrets_in("SASL_SSL://user:k3y-value@broker:9092,broker2:9092")
    assert secrets_in("127.0.0.1:9092") == set() and secrets_in("plain words") == set()


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_log_lines_have_noted_secrets_blanked_out(formatter: logging.Formatter) -> None:
    secret = 'pa"ss\\wörd-42'  # characters a JSON line escapes
    note_secrets_in({"source": {"dsn": f"host=h password='{secret}'"}, "sink": {"sasl_password": "t0ken-value"}})
    record = logging.LogRecord("kafka", logging.ERROR, __file__, 1, "bootstrap from %s failed", (f"x {secret} y",), None)
    record.detail = "t0ken-value"
    line = formatter.format(record)
    assert "***" in line and "t0ken-value" not in line
    assert secret not in line and json.dumps(secret)[1:-1] not in line, line
