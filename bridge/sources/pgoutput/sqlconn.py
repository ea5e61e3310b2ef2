"""The direct source's ordinary SQL connection while it streams: it never stalls the stream, and a killed one is
noticed and reopened at once (or, when the server refuses because it is shutting down, the source stops
streaming so that PostgreSQL can stop: ServerShuttingDown).

The stream does not need it for correctness; it carries heartbeats, the slot's restart_lsn, catalog
look-ups of new types and slot lag. Queries go out on libpq's non-blocking API: `send` does not wait for
the answer (a heartbeat, a slot read; the answer is taken up by the next `check`), `query` waits with a
deadline (a type look-up the decoder needs now). A paused or unreachable server can delay them, never
hang the loop that reads the replication stream. `check`, every status interval, also looks at the socket:
a connection the server closed (pg_terminate_backend, a restart) has input pending that turns out to be
its end, so it is reopened right then with a log line, not when the next heartbeat fails.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

from bridge.errors import BridgeError, ServiceUnavailable
from bridge.sources.pgoutput.stream import connect_timeout, libpq_text, sqlstate_of

log = logging.getLogger(__name__)

Rows = list[tuple[str | None, ...]]
# Reopening a connection the server refuses is retried at most this often.
REOPEN_INTERVAL_S = 2.0


class ServerShuttingDown(ServiceUnavailable):
    """The server refuses new connections because it is shutting down. The replication stream must then be
    closed by the bridge: a stopping walsender waits for its client to confirm all it sent, and a bridge with
    transactions in flight cannot, so PostgreSQL would wait for the bridge forever."""


class SqlFailed(BridgeError):
    """The server answered a query with an error (not a broken connection)."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(slots=True)
class _InFlight:
    what: str  # for messages: "heartbeat", "slot state", ...
    on_rows: Callable[[Rows], None] | None
    on_error: Callable[[SqlFailed], None] | None
    rows: Rows | None = None
    error: SqlFailed | None = None


class SqlConnection:
    """One non-blocking libpq connection in autocommit mode; at most one query in flight."""

    def __init__(self, dsn: str, *, where: str, application_name: str, connect_timeout_s: float) -> None:
        self._conninfo = make_conninfo(dsn, application_name=application_name,
                                       connect_timeout=connect_timeout(connect_timeout_s)).encode()
        self._where = where
        self._conn: pq.abc.PGconn | None = None
        self._in_flight: _InFlight | None = None
        self._next_reopen = 0.0
        self._conn = self._open()

    def _open(self) -> pq.abc.PGconn:
        conn = pq.PGconn.connect(self._conninfo)
        if conn.status != pq.ConnStatus.OK:
            text = libpq_text(conn.error_message)
            conn.finish()
            if "shutting down" in text:  # SQLSTATE 57P03; the text is all a failed connection attempt gives
                raise ServerShuttingDown(
                    f"PostgreSQL at {self._where} is shutting down ({text}): the replication stream is closed so "
                    "that it can stop; the bridge resumes from the slot once the server is back")
            raise ServiceUnavailable(f"cannot connect to the legacy PostgreSQL at {self._where}: {text}")
        conn.nonblocking = 1
        return conn

    # --- queries ---------------------------------------------------------------------------------

    def send(self, what: str, query: str, params: Sequence[Any] = (), *,
             on_rows: Callable[[Rows], None] | None = None,
             on_error: Callable[[SqlFailed], None] | None = None) -> bool:
        """Send without waiting; the answer goes to `on_rows` / `on_error` from a later `check`. False when
        the connection is busy with another query or down (the caller tries again later)."""
        self.check()
        conn = self._conn
        if conn is None or self._in_flight is not None:
            return False
        try:
            conn.send_query_params(query.encode(), [_param(p) for p in params])
            conn.flush()
        except psycopg.OperationalError as exc:
            self._lost(f"sending the {what} query failed: {exc}")
            return False
        self._in_flight = _InFlight(what, on_rows, on_error)
        return True

    def query(self, what: str, query: str, params: Sequence[Any] = (), *, timeout_s: float) -> Rows:
        """Run a query and wait for its rows, at most `timeout_s` (with a query already in flight, its too)."""
        deadline = time.monotonic() + timeout_s
        self._await_idle(deadline, what)
        rows: list[Rows] = []
        errors: list[SqlFailed] = []
        if not self.send(what, query, params, on_rows=rows.append, on_error=errors.append):
            raise ServiceUnavailable(f"no SQL connection to {self._where} for the {what} query (reconnecting)")
        self._await_idle(deadline, what)
        if errors:
            raise errors[0]
        return rows[0]

    def _await_idle(self, deadline: float, what: str) -> None:
        while self._in_flight is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._lost(f"the {what} query got no answer in time")
                raise ServiceUnavailable(f"PostgreSQL at {self._where} did not answer the {what} query in time: "
                                         "is the server paused or overloaded? The connection was reset")
            conn = self._conn
            assert conn is not None, "a query in flight has a connection"
            try:
                select.select([conn.socket], [], [], min(remaining, 0.5))
            except (psycopg.OperationalError, OSError, ValueError):
                pass  # check() below finds out what happened
            self.check()
            if self._conn is None:
                raise ServiceUnavailable(f"the SQL connection to {self._where} broke during the {what} query")

    # --- liveness ----------------------------------------------------------------------------------

    def check(self) -> None:
        """Take up answers that arrived; notice a connection the server closed and reopen it."""
        conn = self._conn
        if conn is None:
            self._reopen()
            return
        try:
            readable = bool(select.select([conn.socket], [], [], 0)[0])
            if readable:
                conn.consume_input()
            if conn.status == pq.ConnStatus.BAD:
                raise psycopg.OperationalError(libpq_text(conn.error_message) or "connection lost")
            while self._in_flight is not None and not conn.is_busy():
                self._take_result(conn)
        except (psycopg.OperationalError, OSError, ValueError) as exc:
            self._lost(libpq_text(conn.error_message) or str(exc))
            self._reopen()

    def _take_result(self, conn: pq.abc.PGconn) -> None:
        flight = self._in_flight
        assert flight is not None
        result = conn.get_result()
        if result is None:  # the query is complete: hand its outcome over
            self._in_flight = None
            if flight.error is not None:
                if flight.on_error is not None:
                    flight.on_error(flight.error)
                else:
                    log.warning("query failed on the SQL connection", extra={"query": flight.what,
                                                                              "error": str(flight.error)})
            elif flight.on_rows is not None:
                flight.on_rows(flight.rows or [])
            return
        if result.status == pq.ExecStatus.TUPLES_OK:
            flight.rows = [tuple(None if (v := result.get_value(i, j)) is None else v.decode()
                                 for j in range(result.nfields)) for i in range(result.ntuples)]
        elif result.status == pq.ExecStatus.FATAL_ERROR:
            flight.error = SqlFailed(f"{flight.what} query failed on {self._where}: {libpq_text(result.error_message)}",
                                     sqlstate_of(result) or "")

    def _lost(self, reason: str) -> None:
        if self._conn is not None:
            log.warning("the SQL connection to the legacy PostgreSQL was closed; reopening it",
                        extra={"where": self._where, "error": reason,
                               "lost_query": self._in_flight.what if self._in_flight else None})
            self._conn.finish()
        self._conn = None
        self._in_flight = None  # its answer is lost with the connection; heartbeats and slot reads are repeated

    def _reopen(self) -> None:
        now = time.monotonic()
        if now < self._next_reopen:
            return
        self._next_reopen = now + REOPEN_INTERVAL_S
        try:
            self._conn = self._open()
        except ServerShuttingDown:
            raise
        except ServiceUnavailable as exc:
            log.warning("the SQL connection cannot be reopened yet; the stream goes on without it",
                        extra={"error": str(exc)})
            return
        log.warning("the SQL connection to the legacy PostgreSQL was reopened", extra={"where": self._where})

    def close(self) -> None:
        if self._conn is not None:
            self._conn.finish()
            self._conn = None


def _param(value: Any) -> bytes | None:
    return None if value is None else str(value).encode()

