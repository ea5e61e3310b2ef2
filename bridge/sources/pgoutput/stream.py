"""The streaming replication protocol (START_REPLICATION ... LOGICAL) over psycopg 3's libpq binding.

psycopg 3 has no replication API at the connection level, but `psycopg.pq` exposes libpq itself:
a `replication=database` connection, COPY BOTH mode, and the copy-data calls. Driving the protocol
here, rather than through psycopg2's LogicalReplicationCursor, matters for safety: psycopg2 2.9
moves the flush position it reports to the server by itself, to a keepalive's WAL end, whenever our
last reported flush is at or past the start of the last message received. With concurrent writers a
transaction's Begin can start before an earlier-committed transaction's end, so that rule can confirm
a transaction that was received but not yet delivered, and a crash would lose it. Here the server
hears only the positions the caller reports (`send_status`), never anything it inferred.

Message layouts (PostgreSQL "Streaming Replication Protocol"):
  XLogData      'w' dataStart(8) walEnd(8) sendTime(8) payload
  Keepalive     'k' walEnd(8) sendTime(8) replyRequested(1)
  Status update 'r' write(8) flush(8) apply(8) clientTime(8) replyRequested(1)
"""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

from bridge.errors import ConfigurationError, ServiceUnavailable
from bridge.sources.pgoutput.protocol import lsn_text, parse_lsn

_XLOG_HEADER = struct.Struct(">QQQ")
_KEEPALIVE = struct.Struct(">QQB")
_STATUS = struct.Struct(">cQQQqB")
# PostgreSQL timestamps count microseconds from 2000-01-01 UTC.
_PG_EPOCH_OFFSET_S = 946_684_800

_SQLSTATE_OBJECT_IN_USE = "55006"
_SQLSTATE_UNDEFINED_OBJECT = "42704"
_SQLSTATE_INSUFFICIENT_PRIVILEGE = "42501"
_SQLSTATE_DUPLICATE_OBJECT = "42710"
_SQLSTATE_CONFIGURATION_LIMIT = "53400"


class SlotInUse(ServiceUnavailable):
    """Another connection streams the slot: another bridge, or the walsender of one that just died."""


@dataclass(frozen=True, slots=True)
class SystemIdentity:
    """IDENTIFY_SYSTEM: which cluster and history the stream comes from, and how far its WAL is flushed."""

    system_id: str  # pg_control's system identifier: differs for every initdb
    timeline: int  # a new one after a promotion or a point-in-time recovery
    flushed_lsn: int


class ReplicationStream:
    """One logical replication stream: read XLogData payloads, report positions, answer keepalives."""

    def __init__(self, dsn: str, *, where: str, session_options: str, application_name: str,
                 connect_timeout_s: float = 10.0) -> None:
        self._where = where
        self._answer_timeout_s = max(10.0, connect_timeout_s)
        conninfo = make_conninfo(dsn, replication="database", options=session_options,
                                 application_name=application_name, connect_timeout=connect_timeout(connect_timeout_s))
        self._conn = pq.PGconn.connect(conninfo.encode())
        self._finished = False
        if self._conn.status != pq.ConnStatus.OK:
            text = libpq_text(self._conn.error_message)
            self.close()
            if "pg_hba.conf" in text:
                raise ConfigurationError(
                    f"PostgreSQL at {where} refuses the replication connection: {text}. Allow it in "
                    "pg_hba.conf (a `replication` entry is not needed for logical slots, but the database entry "
                    "must admit this user)")
            if "superuser or replication role" in text or "permission denied" in text:
                raise ConfigurationError(
                    f"PostgreSQL at {where} refuses the replication connection: {text}. The user needs the "
                    "REPLICATION attribute (ALTER ROLE <user> REPLICATION) or superuser")
            raise ServiceUnavailable(f"cannot open a replication connection to {where}: {text}")
        self.reported_lsn = 0  # what the server was last told is flushed
        self.keepalives = 0
        self.last_received = time.monotonic()  # of the last message of any kind: the silence clock
        # Told each keepalive's WAL end before any reply to it: the caller may then report more as flushed.
        self.on_keepalive: Callable[[int], None] | None = None

    def identify_system(self) -> SystemIdentity:
        """IDENTIFY_SYSTEM; before start()."""
        result = self._command("IDENTIFY_SYSTEM")
        while self._command(None) is not None:  # the command's end
            pass
        if result is None or result.status != pq.ExecStatus.TUPLES_OK or result.ntuples != 1:
            text = libpq_text(result.error_message if result is not None else self._conn.error_message)
            raise ServiceUnavailable(f"IDENTIFY_SYSTEM on {self._where} failed: {text}")
        system_id, timeline, flushed = (result.get_value(0, i) or b"" for i in range(3))
        return SystemIdentity(system_id.decode(), int(timeline), parse_lsn(flushed.decode()))

    def _command(self, command: str | None) -> pq.abc.PGresult | None:
        """Send `command` (None: nothing, take the next result of the last one) and wait for a result at most
        answer_timeout_s: a server that accepted the connection and then stops answering never hangs us."""
        conn = self._conn
        deadline = time.monotonic() + self._answer_timeout_s
        try:
            if command is not None:
                conn.send_query(command.encode())
            while conn.is_busy():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServiceUnavailable(
                        f"PostgreSQL at {self._where} did not answer {(command or 'a command').split()[0]} within "
                        f"{self._answer_timeout_s:.0f} s: is the server paused or overloaded?")
                select.select([conn.socket], [], [], min(remaining, 1.0))
                conn.consume_input()
            return conn.get_result()
        except (psycopg.OperationalError, OSError) as exc:
            raise self._broken(str(exc)) from exc

    def create_slot(self, slot: str, *, temporary: bool) -> tuple[int, str]:
        """CREATE_REPLICATION_SLOT ... LOGICAL pgoutput (SNAPSHOT 'export'): the slot's consistent point and the
        exported snapshot's name. The snapshot lives until this connection runs another command or closes."""
        command = (f"CREATE_REPLICATION_SLOT {_identifier(slot)}{' TEMPORARY' if temporary else ''} LOGICAL pgoutput "
                   "(SNAPSHOT 'export')")
        result = self._command(command)
        while self._command(None) is not None:  # the command's end
            pass
        if result is not None and result.status == pq.ExecStatus.TUPLES_OK and result.ntuples == 1:
            consistent_point = (result.get_value(0, 1) or b"").decode()
            return parse_lsn(consistent_point), (result.get_value(0, 2) or b"").decode()
        text = libpq_text(result.error_message if result is not None else self._conn.error_message)
        state = sqlstate_of(result)
        if state == _SQLSTATE_DUPLICATE_OBJECT:
            raise ConfigurationError(f"replication slot {slot!r} already exists on {self._where}: {text}")
        if state == _SQLSTATE_INSUFFICIENT_PRIVILEGE:
            raise ConfigurationError(
                f"cannot create replication slot {slot!r} on {self._where}: {text}. The user needs the REPLICATION "
                "attribute (ALTER ROLE <user> REPLICATION) or superuser")
        if state == _SQLSTATE_CONFIGURATION_LIMIT:
            raise ConfigurationError(
                f"cannot create replication slot {slot!r} on {self._where}: {text}. Raise max_replication_slots "
                "(or max_wal_senders), or drop a slot nobody uses")
        raise ServiceUnavailable(f"cannot create replication slot {slot!r} on {self._where}: {text}")

    def start(self, slot: str, start_lsn: int, options: Mapping[str, str]) -> None:
        plugin_options = ", ".join(f"{_identifier(k)} {_literal(v)}" for k, v in options.items())
        command = f"START_REPLICATION SLOT {_identifier(slot)} LOGICAL {lsn_text(start_lsn)} ({plugin_options})"
        result = self._command(command)
        if result is not None and result.status == pq.ExecStatus.COPY_BOTH:
            return
        text = libpq_text(result.error_message if result is not None else self._conn.error_message)
        state = sqlstate_of(result)
        if state == _SQLSTATE_OBJECT_IN_USE:
            raise SlotInUse(
                f"replication slot {slot!r} on {self._where} is in use by another process ({text}): "
                "is another bridge running with the same source.slot_name?")
        if state == _SQLSTATE_INSUFFICIENT_PRIVILEGE:
            raise ConfigurationError(
                f"cannot stream replication slot {slot!r} on {self._where}: {text}. The user needs the "
                "REPLICATION attribute (ALTER ROLE <user> REPLICATION) or superuser")
        if state == _SQLSTATE_UNDEFINED_OBJECT:
            raise ConfigurationError(f"cannot stream replication slot {slot!r} on {self._where}: {text}")
        raise ServiceUnavailable(f"cannot start streaming slot {slot!r} from {self._where}: {text}")

    def read(self) -> tuple[int, bytes] | None:
        """The next XLogData message as (dataStart, payload), or None when nothing is buffered.

        Keepalives are consumed here; one that asks for a reply gets the last reported position.
        """
        conn = self._conn
        while True:
            try:
                size, data = conn.get_copy_data(1)
                if size == 0:
                    conn.consume_input()  # nothing buffered: take what the socket has, without blocking
                    size, data = conn.get_copy_data(1)
                    if size == 0:
                        return None
            except psycopg.OperationalError as exc:
                raise self._broken(str(exc)) from exc
            if size < 0:
                raise self._broken(self._end_reason())
            kind = data[0]
            self.last_received = time.monotonic()
            if kind == 0x77:  # 'w'
                data_start, _, _ = _XLOG_HEADER.unpack_from(data, 1)
                return data_start, bytes(data[1 + _XLOG_HEADER.size:])
            if kind == 0x6B:  # 'k'
                # The keepalive's WAL end is never reported by itself: that could confirm what the pipeline
                # has not delivered (the psycopg2 behaviour this module replaces). The caller decides.
                wal_end, _, reply_requested = _KEEPALIVE.unpack_from(data, 1)
                self.keepalives += 1
                if self.on_keepalive is not None:
                    self.on_keepalive(wal_end)
                if reply_requested:
                    self.send_status(self.reported_lsn)
                continue
            raise self._broken(f"unexpected replication message type {bytes(data[:1])!r}")

    def wait(self, timeout_s: float) -> None:
        """Block until the server sends something or `timeout_s` passes."""
        if timeout_s > 0:
            try:
                select.select([self._conn.socket], [], [], timeout_s)
            except (psycopg.OperationalError, OSError, ValueError) as exc:  # the connection is gone
                raise self._broken(libpq_text(self._conn.error_message) or str(exc)) from exc

    def send_status(self, flush_lsn: int) -> None:
        """Tell the server everything up to `flush_lsn` is durably handled (never moves backwards)."""
        self.reported_lsn = max(self.reported_lsn, flush_lsn)
        lsn = self.reported_lsn
        now_us = int((time.time() - _PG_EPOCH_OFFSET_S) * 1_000_000)
        message = _STATUS.pack(b"r", lsn, lsn, lsn, now_us, 0)
        try:
            self._conn.put_copy_data(message)
            self._conn.flush()
        except (psycopg.OperationalError, OSError) as exc:
            raise ServiceUnavailable(
                f"reporting position {lsn_text(lsn)} to {self._where} failed: {libpq_text(self._conn.error_message) or exc}"
            ) from exc

    @property
    def closed(self) -> bool:
        return self._finished or self._conn.status == pq.ConnStatus.BAD

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._conn.finish()

    def _end_reason(self) -> str:
        result = self._conn.get_result()
        if result is not None and result.error_message:
            return libpq_text(result.error_message)
        return libpq_text(self._conn.error_message) or "the server ended the replication stream"

    def _broken(self, reason: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"the replication stream from {self._where} broke: {reason.strip()}")


def connect_timeout(seconds: float) -> str:
    """libpq's connect_timeout: whole seconds, and at least 2 (libpq raises smaller values to 2)."""
    return str(max(2, round(seconds)))


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def libpq_text(raw: bytes | None) -> str:
    """A libpq message's first line (its detail and hint lines would break the one-line errors)."""
    text = (raw or b"").decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else ""


def sqlstate_of(result: pq.abc.PGresult | None) -> str | None:
    if result is None:
        return None
    value = result.error_field(pq.DiagnosticField.SQLSTATE)
    return value.decode() if value else None
