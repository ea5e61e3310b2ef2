"""Keeps passwords out of what the bridge prints and logs: redacted DSNs, and a last scrub of known secrets.

Messages name connection strings without their passwords (`redacted_dsn`), and a DSN that does not parse
is refused with libpq's reason scrubbed (`dsn_problem`), since libpq quotes the string it could not parse.
As a last line of defence the command line, the environment and the settings are searched for
password-like parts (`note_secrets_in`), and `scrub` blanks them out of error lines and log records, so
that a library quoting a connection string or an address in its own message cannot leak one either.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values are not scrubbed from free text: they would blank out ordinary words

# user:password@ in a URL, with or without a scheme (libpq ends the user info at the first '@' or '/').
_USERINFO = re.compile(r"[^\s:/@,]*:(?P<password>[^\s/@,]+)@")
# password=... as a keyword/value pair or a URL query parameter; quoted values may hold spaces.
_PASSWORD_PAIR = re.compile(
    r"(?:^|[\s?&])(?:ssl)?password\s*=\s*(?:'(?P<quoted>(?:\\.|[^'\\])*)'?|(?P<bare>[^\s&]+)(?P<rest>[^\s]*))",
    re.IGNORECASE)
# Settings or environment variables whose whole value is a secret.
_SECRET_NAME = re.compile(r"password|passwd|secret|token|credential", re.IGNORECASE)
# Environment variables that may hold a connection string or an address.
_ENV_PREFIXES = ("BRIDGE_", "LEGACY_", "PG", "KAFKA")

_known: set[str] = set()


def redacted_dsn(dsn: str) -> str:
    """The DSN as it may appear in a message or a log: key=value pairs without the password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    for key in ("password", "sslpassword"):
        params.pop(key, None)
    return make_conninfo("", **{k: str(v) for k, v in params.items() if v is not None})


def dsn_problem(dsn: str) -> str | None:
    """Why libpq cannot parse `dsn` (with its secrets blanked out), or None when it parses."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        secrets = secrets_in(dsn)
        reason = _scrub(" ".join(str(exc).split()), secrets, min_length=1)
        reason = _QUOTED.sub(lambda quoted: '"..."' if _risky(quoted[1], dsn, secrets) else quoted[0], reason)
        return (f"not a PostgreSQL connection string ({reason}); expected a "
                "postgresql://user:password@host:port/database URL or key=value pairs")
    return None


_QUOTED = re.compile(r'"([^"]*)"')


def _risky(fragment: str, dsn: str, secrets: set[str]) -> bool:
    """Whether a fragment of the DSN that libpq quotes may hold a password: user info, a pair, or long text
    (the option names and bad values it usually quotes, like "port" or "notaport", are kept: they help)."""
    return (len(fragment) > 1 and fragment in dsn
            and (len(fragment) > 24 or any(c in fragment for c in "@:='\\ ") or any(s in fragment for s in secrets)))


def secrets_in(text: str) -> set[str]:
    """The password-like parts of a DSN, URL or address (parsed or not), raw and percent-decoded."""
    found: set[str] = set()
    for match in _USERINFO.finditer(text):
        found.add(match["password"])
    for match in _PASSWORD_PAIR.finditer(text):
        if match["quoted"] is not None:
            found.update({match["quoted"], re.sub(r"\\(.)", r"\1", match["quoted"])})
        else:
            found.update({match["bare"], match["bare"] + match["rest"]})
    try:
        params = conninfo_to_dict(text) if ("=" in text or "://" in text) else {}
    except psycopg.ProgrammingError:
        params = {}
    found.update(str(params[key]) for key in ("password", "sslpassword") if params.get(key))
    found.update({unquote(value) for value in found})
    return {value for value in found if value}


def note_secrets_in(value: Any, name: str = "") -> None:
    """Remember every secret in `value` (a string, or settings, mappings and lists of them) for `scrub`."""
    if hasattr(value, "model_dump"):  # pydantic settings
        value = value.model_dump()
    if isinstance(value, Mapping):
        for key, item in value.items():
            note_secrets_in(item, str(key))
    elif isinstance(value, (list, tuple)):
        for item in value:
            note_secrets_in(item, name)
    elif isinstance(value, str):
        _remember(secrets_in(value))
        if _SECRET_NAME.search(name) and value:
            _remember({value})


def _remember(secrets: Iterable[str]) -> None:
    for secret in secrets:
        _known.update({secret, json.dumps(secret)[1:-1]})  # also as a JSON log line spells it

def note_secrets_of_invocation(argv: Iterable[str], environ: Mapping[str, str] = os.environ) -> None:
    """Remember the secrets of the command line and of the environment variables a DSN or address may come
    from (BRIDGE_*, LEGACY_*, PG*, KAFKA*, or any named like a password)."""
    for argument in argv:
        note_secrets_in(argument)
    for variable, value in environ.items():
        if variable.upper().startswith(_ENV_PREFIXES) or _SECRET_NAME.search(variable):
            note_secrets_in(value, variable)


def scrub(text: str) -> str:
    """`text` with every remembered secret blanked out."""
    return _scrub(text, _known)


def _scrub(text: str, secrets: Iterable[str], min_length: int = MIN_SECRET_LENGTH) -> str:
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: one may contain another
        if len(secret) >= min_length and secret in text:
            text = text.replace(secret, MASK)
    return text
