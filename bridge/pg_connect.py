"""Why a PostgreSQL connection failed, as the bridge's error: a setting to fix (exit 2) or a server to
wait for (exit 3).

psycopg reports a failed connection as an OperationalError without a SQLSTATE (the server's FATAL
message arrives before any query), so the server's message text decides. A database that does not
exist, a refused login or an unknown host cannot get better by waiting; a refused connection, a server
starting up or shutting down, or a full server can.
"""

from __future__ import annotations

import re

from bridge.errors import BridgeError, ConfigurationError, ServiceUnavailable, UnresolvableHost

_DATABASE_MISSING = re.compile(r'database "(?P<name>[^"]*)" does not exist')
_ROLE_MISSING = re.compile(r'role "(?P<name>[^"]*)" does not exist')
_NO_LOGIN = re.compile(r'role "(?P<name>[^"]*)" is not permitted to log in')
_LOGIN_REFUSED = ("password authentication failed", "no password supplied", "authentication failed",
                  "no pg_hba.conf entry", "pg_hba.conf rejects connection")
_MALFORMED = ("invalid connection option", 'missing "="', "invalid integer value", "invalid URI",
              "invalid dsn", "unterminated quoted string", "invalid percent-encoded token",
              "Servname not supported")  # (the last: a port that is not a number)
_HOST_UNKNOWN = ("Name or service not known", "No address associated with hostname", "nodename nor servname",
                 "[Errno -2]", "[Errno -5]")


def connect_error(exc: Exception, *, where: str, setting: str) -> BridgeError:
    """The error to raise for a failed connection to `where` (a redacted DSN) configured by `setting`."""
    reason = _reason(exc)
    at = f"PostgreSQL at {where} ({setting})"
    if any(text in reason for text in _MALFORMED):
        return ConfigurationError(
            f"{setting} is not a PostgreSQL URL or connection string libpq reads: {reason}. Write it as "
            "postgresql://user@host:5432/database")
    if match := _DATABASE_MISSING.search(reason):
        return ConfigurationError(
            f"{at}: database {match['name']!r} does not exist: fix the database name in {setting}, or create it")
    if match := _NO_LOGIN.search(reason):
        return ConfigurationError(
            f"{at}: role {match['name']!r} may not log in: ALTER ROLE {match['name']} LOGIN, or use another user "
            f"in {setting}")
    if match := _ROLE_MISSING.search(reason):
        return ConfigurationError(f"{at}: role {match['name']!r} does not exist: fix the user in {setting}")
    if any(text in reason for text in _LOGIN_REFUSED):
        return ConfigurationError(
            f"{at} refused the login: {reason}. Check the user and password in {setting} (or the PGPASSWORD/"
            "~/.pgpass it relies on) and the server's pg_hba.conf")
    if "resolve host" in reason or "translate host name" in reason:
        if any(text in reason for text in _HOST_UNKNOWN):
            return UnresolvableHost(f"{at}: {reason}: fix the host in {setting}")
    return ServiceUnavailable(f"cannot connect to {at}: {reason}; check the address and that the server is up")


def _reason(exc: Exception) -> str:
    """The server's or libpq's words, on one line, without psycopg's 'connection failed: ...' preamble."""
    text = " ".join(str(exc).split())
    text = re.sub(r'^connection failed: connection to server at "[^"]*", port \d+ failed: ', "", text)
    return text.removeprefix("FATAL: ").strip() or type(exc).__name__
