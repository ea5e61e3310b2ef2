"""PostgreSQL's logical replication stream (pgoutput) as a ChangeSource: no Kafka Connect in between.

Two connections:

- a replication connection streams the slot (bridge/sources/pgoutput/stream.py drives the protocol over
  psycopg 3's libpq binding). Streaming was chosen over polling the slot with SQL functions by measuring:
  p50 1.8 ms from commit to receipt against 22 ms, and no re-decoding of the slot on every poll;
- an ordinary one (sqlconn.py, after setup.py's checks) for heartbeats, the slot's restart_lsn, catalog
  look-ups of new types and slot lag; never needed for correctness, reopened when it breaks.

Positions (progress.py). The slot's confirmed_flush_lsn moves only to the commit LSN of a transaction
that, with every transaction before it, is done (all its events acknowledged by the sink) and committed
by the pipeline, or to a keepalive's WAL end once everything received before that keepalive is; a crash
replays at worst what was not yet acknowledged. The position reported is also kept on local disk (acked.py): a
slot that a server restart moved back (before PostgreSQL 17 the slot's position is often not on disk)
is resumed where this bridge acknowledged, and what the server would resend is not published twice. The
prior-row store keeps history back to the slot's restart_lsn (`replay_floor`), so that even a replay
nobody could skip translates as the first time.

A slot this source creates comes with an exported snapshot, read first (initial_snapshot.py); the slot is
streamed once all of it is acknowledged. Slots are never dropped, but for one whose snapshot never finished.

Every way the connections can break (walsender terminated, server shut down or crashed, connection
reset, no answer in time) is a ServiceUnavailable naming what broke: a new source resumes exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bridge.changes import Op, SourcePosition, Transaction
from bridge.errors import BridgeError, ConfigurationError, ServiceUnavailable
from bridge.pg_connect import connect_error
from bridge.ports import SourceUnit
from bridge.redact import redacted_dsn
from bridge.settings import PgOutputSource
from bridge.sources.pgoutput.acked import AcknowledgedPositions
from bridge.sources.pgoutput.changes import PgOutputAssembler, TransactionDecodeError
from bridge.sources.pgoutput.drift import MappingContract, SchemaWatch
from bridge.sources.pgoutput.initial_snapshot import InitialSnapshot
from bridge.sources.pgoutput.progress import Progress
from bridge.sources.pgoutput.protocol import Relation, lsn_text, parse_lsn, parse_message
from bridge.sources.pgoutput.setup import Prepared, first_line, prepare
from bridge.sources.pgoutput.snapshot_marker import marker_file
from bridge.sources.pgoutput.snapshot_slot import plan_slot
from bridge.sources.pgoutput.spill import SpillPolicy
from bridge.sources.pgoutput.sqlconn import SqlConnection, SqlFailed
from bridge.sources.pgoutput.stream import ReplicationStream, SlotInUse, SystemIdentity, connect_timeout
from bridge.sources.pgoutput.values import SESSION_SETTINGS, USER_TYPES_SQL, UserType, needs_catalog

log = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "cdc-bridge-heartbeat"
# Read at most this many stream messages per poll, so the pipeline gets units (and acks flow) during a backlog.
MAX_MESSAGES_PER_POLL = 5000
# Hand over complete transactions after this long even while more messages wait: under sustained load the
# first transaction of a long read would otherwise wait for the whole read before being published.
MAX_READ_S_WITH_UNITS = 0.005
# How often the slot's restart_lsn (the prior-row store's prune floor) is read again.
SLOT_READ_INTERVAL_S = 5.0
# A catalog look-up the decoder waits for (a new enum): longer means the server is not answering.
CATALOG_TIMEOUT_S = 30.0

SLOT_LAG_SQL = ("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) FROM pg_replication_slots "
                "WHERE slot_name = %s")
_SLOT_STATE_SQL = "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1"
_HEARTBEAT_SQL = "SELECT pg_logical_emit_message(false, $1, '')"


class PgOutputChangeSource:
    """Streams the pgoutput slot of the mapped tables; one SourceUnit per committed transaction.

    contract: the mappings' declared column types and the columns each rule reads; with it, a table whose
    Relation message no longer fits stops the rules reading the changed column (SourceUnit.stopped_rules).
    acknowledged_path: where the acknowledged position is kept across restarts (acked.py); None: nowhere.
    spill: hold a transaction larger than the policy allows on disk, not in memory (spill.py).
    snapshot_marker: where the initial snapshot's marker is kept (snapshot_marker.py); needed for
    source.snapshot: initial. `tables` are snapshot in the order given: parents first.
    """

    def __init__(self, settings: PgOutputSource, tables: Iterable[str], *, contract: MappingContract | None = None,
                 acknowledged_path: Path | None = None, spill: SpillPolicy | None = None,
                 snapshot_marker: Path | None = None) -> None:
        self._settings = settings
        self._snapshot_order = list(dict.fromkeys(tables))
        self._tables = sorted(self._snapshot_order)
        if not self._tables:
            raise ConfigurationError("the pgoutput source needs at least one mapped table to publish")
        self._marker_file = marker_file(settings.snapshot, snapshot_marker)
        self._snapshot: InitialSnapshot | None = None  # the first phase, while it lasts: no stream meanwhile
        self._where = redacted_dsn(settings.dsn)
        self._progress = Progress(0)
        self._stream: ReplicationStream | None = None
        self._sql: SqlConnection | None = None
        self._identity: SystemIdentity | None = None
        self._positions = AcknowledgedPositions(acknowledged_path) if acknowledged_path is not None else None
        self._watch = SchemaWatch(contract, schema=settings.schema_name) if contract is not None else None
        self._stopped_in_transaction: dict[str, str] = {}
        self._start_lsn = self._restart_lsn = 0
        self.created_slot = self.created_publication = False
        try:
            prepared = self._prepare()
            self.created_slot, self.created_publication = prepared.created_slot, prepared.created_publication
            self._restart_lsn = prepared.restart_lsn
            self._assembler = PgOutputAssembler(user_types=prepared.user_types, primary_keys=prepared.primary_keys,
                                                spill=spill)
            self._sql = SqlConnection(settings.dsn, where=self._where, application_name="cdc-bridge",
                                      connect_timeout_s=settings.connect_timeout_s)
            self._confirmed_flush = prepared.confirmed_flush_lsn
            if self._snapshot is None:
                self._start_stream(prepared.confirmed_flush_lsn)
        except BaseException:
            self.close()
            raise
        now = time.monotonic()
        self._last_arrival = self._last_heartbeat = self._last_status = self._last_check = now
        self._last_slot_read = now
        self._silence_warned_at: float | None = None

    # --- setup -------------------------------------------------------------------------------------

    def _prepare(self) -> Prepared:
        """Publication, slot (and snapshot) and catalog, on a connection of its own closed right after."""
        try:
            conn = psycopg.connect(self._settings.dsn, autocommit=True, application_name="cdc-bridge-setup",
                                   connect_timeout=connect_timeout(self._settings.connect_timeout_s))
        except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:  # (ProgrammingError: a malformed DSN)
            # A wrong database, user or password is a setting to fix, anything else an outage to wait for.
            raise connect_error(exc, where=self._where, setting="source.dsn") from exc
        try:
            slot = plan_slot(conn, self._settings, self._snapshot_order, self._marker_file, self._where)
            prepared = prepare(conn, self._settings, self._tables, self._where, create_slot=slot)
            self._snapshot = InitialSnapshot.begin(slot, self._snapshot_order, self._settings, self._where)
            return prepared
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(
                f"the legacy PostgreSQL at {self._where} went away while the source was set up: {first_line(exc)}"
            ) from exc
        finally:
            conn.close()

    def _start_stream(self, confirmed_flush: int) -> None:
        """Stream from the slot's confirmed flush position, or from what this bridge acknowledged when the slot
        moved back. A slot still held by the walsender of a bridge that just died (kill -9, a crashed host) is
        waited for up to slot_busy_wait_s: the server frees it once it notices the dead connection."""
        deadline = time.monotonic() + self._settings.slot_busy_wait_s
        while True:
            self._stream = ReplicationStream(self._settings.dsn, where=self._where, session_options=SESSION_SETTINGS,
                                             application_name="cdc-bridge-stream",
                                             connect_timeout_s=self._settings.connect_timeout_s)
            try:
                if self._identity is None:
                    self._identity = self._stream.identify_system()
                    self._start_lsn = self._resume_point(confirmed_flush, self._identity)
                self._stream.start(self._settings.slot_name, self._start_lsn, {
                    "proto_version": "1", "publication_names": self._settings.publication_name, "messages": "true"})
                break
            except SlotInUse as exc:
                self._stream.close()
                if time.monotonic() >= deadline:
                    raise
                log.warning("replication slot busy; waiting for it", extra={"error": str(exc)})
                time.sleep(1.0)
        self._stream.reported_lsn = self._start_lsn
        self._progress = Progress(self._start_lsn)
        self._stream.on_keepalive = self._on_keepalive
        log.info("streaming started", extra={"slot": self._settings.slot_name, "start_lsn": lsn_text(self._start_lsn)})

    def _resume_point(self, confirmed_flush: int, identity: SystemIdentity) -> int:
        kept = self._positions.recall(identity, self._settings.slot_name) if self._positions is not None else 0
        if kept <= confirmed_flush:
            return confirmed_flush
        log.warning(
            "replication slot moved back: the server would resend transactions this bridge already published "
            "(before PostgreSQL 17 a slot's position is often not on disk at a restart); resuming where it "
            "acknowledged", extra={"slot": self._settings.slot_name, "slot_confirmed_flush_lsn": lsn_text(confirmed_flush),
                                   "acknowledged_lsn": lsn_text(kept), "moved_back_bytes": kept - confirmed_flush})
        return kept

    # --- ChangeSource ------------------------------------------------------------------------------

    def poll(self, timeout_s: float) -> list[SourceUnit]:
        """Read what the server has sent, waiting up to `timeout_s` for the first message (or snapshot batches)."""
        if self._snapshot is not None:
            return self._snapshot.poll(timeout_s)
        started = time.monotonic()
        deadline = started + timeout_s
        units: list[SourceUnit] = []
        read = 0
        stream = self._stream
        assert stream is not None, "streaming starts in __init__"
        while True:
            message = stream.read()
            if message is not None:
                read += 1
                self._take(*message, units)
                if read < MAX_MESSAGES_PER_POLL and not (
                        units and read % 64 == 0 and time.monotonic() - started >= MAX_READ_S_WITH_UNITS):
                    continue
            if units or read >= MAX_MESSAGES_PER_POLL:
                break  # (the time cap also ends up here: it only stops reading once units are in hand)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._keep_alive()
            stream.wait(min(remaining, self._settings.status_interval_s))
        self._keep_alive()
        return units

    def _take(self, lsn: int, payload: bytes, units: list[SourceUnit]) -> None:
        kind = payload[:1]
        message = None  # the assembler parses the others itself, on its hot path for changes, Begin and Commit
        if kind == b"R":
            message = parse_message(payload, lsn)
            self._relation(message, lsn)  # type: ignore[arg-type]
        try:
            # Only a non-transactional logical message ('M') can need the time of receipt.
            transaction = self._assembler.feed(lsn, payload, message=message,
                                               received_at=datetime.now(UTC) if kind == b"M" else None)
        except TransactionDecodeError as exc:
            self._last_arrival = time.monotonic()
            stopped = self._stopped_rules_of_transaction()
            if exc.commit_lsn <= self._start_lsn:
                return
            handle = self._progress.release(exc.commit_lsn, SourcePosition(exc.commit_lsn, exc.commit_lsn))
            units.append(SourceUnit(None, handle, error=exc, stopped_rules=stopped, raw={
                "source": "pgoutput", "slot": self._settings.slot_name, "xid": exc.xid,
                "commit_lsn": lsn_text(exc.commit_lsn), "commit_time": exc.commit_time.isoformat(),
                "relation": exc.relation, "column": exc.column, "error": str(exc)}))
            return
        if transaction is None:
            return
        self._last_arrival = time.monotonic()
        stopped = self._stopped_rules_of_transaction()
        if transaction.commit_lsn <= self._start_lsn:
            if type(transaction.changes) is not tuple:
                transaction.changes.close()  # a large transaction spilled to disk: free its file
            return  # acknowledged before this start; the server resends from the slot's flush position
        handle = self._progress.release(transaction.commit_lsn, transaction.newest_position())
        units.append(SourceUnit(transaction, handle, heartbeat=_is_heartbeat(transaction), stopped_rules=stopped))

    def _relation(self, relation: Relation, lsn: int) -> None:
        """A table's shape, before its changes: learn types it uses that are new, then check it against the
        mappings (rules stopped at any moment of a transaction stay stopped for the whole of it)."""
        unknown = sorted({c.type_oid for c in relation.columns if needs_catalog(c.type_oid, self._assembler.user_types)})
        if unknown:
            self._learn_types(relation, unknown)
        if self._watch is None:
            return
        self._stopped_in_transaction.update(self._watch.stopped_rules)
        for note in self._watch.observe(relation, self._assembler.user_types, lsn):
            log.log(note.level, note.message, extra=note.fields)

    def _learn_types(self, relation: Relation, unknown: list[int]) -> None:
        """Types created while the bridge runs (CREATE TYPE ... AS ENUM, a domain): read them from the catalog
        so that enums decode as their labels and domains as their base type, like the types known at start."""
        assert self._sql is not None
        rows = self._sql.query("new types", USER_TYPES_SQL, timeout_s=CATALOG_TIMEOUT_S)
        self._assembler.learn_types([UserType.from_row(row) for row in rows])
        known = self._assembler.user_types
        log.info("new types read from the catalog", extra={
            "relation": relation.qualified_name,
            "types": [f"{known[oid].namespace}.{known[oid].name}" for oid in unknown if oid in known]})
        if missing := [oid for oid in unknown if oid not in known]:
            announced = self._assembler.announced_types
            log.warning("types of a relation are not in the catalog (dropped since?); their values cannot be "
                        "decoded", extra={"relation": relation.qualified_name, "types": [
                            f"{announced[oid].namespace}.{announced[oid].name}" if oid in announced else f"OID {oid}"
                            for oid in missing]})

    def _stopped_rules_of_transaction(self) -> dict[str, str]:
        if self._watch is None or not (self._stopped_in_transaction or self._watch.stopped_rules):
            return {}
        stopped = {**self._stopped_in_transaction, **self._watch.stopped_rules}
        self._stopped_in_transaction = {}
        return stopped

    def done(self, unit: SourceUnit) -> None:
        if self._snapshot is not None and self._snapshot.owns(unit):
            self._snapshot.done(unit)
        else:
            self._progress.done(unit.handle)

    def pending(self) -> int:
        """Transactions handed out and not yet done, plus one while a transaction is half received (or the
        snapshot lasts)."""
        if self._snapshot is not None:
            return self._snapshot.pending
        return self._progress.not_done + int(self._assembler.in_transaction)

    def commit(self) -> SourcePosition | None:
        """Report the newest position whose transaction and all before it are done; return its position. During
        the initial snapshot, report nothing; once all of it is done (and the prior rows durable), stream."""
        if self._snapshot is not None:
            if self._snapshot.commit():
                self._snapshot = None
                self._start_stream(self._confirmed_flush)
            return None
        self._progress.advance()
        self._send_status()
        return self._progress.last_safe

    def replay_floor(self) -> SourcePosition | None:
        """The slot's restart_lsn: after a server restart the slot may resend anything committed after it,
        even what was acknowledged, so history after it must stay in the prior-row store."""
        return SourcePosition(self._restart_lsn, 0, 0) if self._restart_lsn else None

    def close(self) -> None:
        """Report what is done, then close both connections. The slot stays: it is the bridge's position."""
        if self._snapshot is not None:
            self._snapshot.close()
        if self._stream is not None:
            try:
                if not self._stream.closed:
                    self.commit()
            except BridgeError as exc:
                log.warning("final status to the replication stream failed", extra={"error": first_line(exc)})
            finally:
                self._stream.close()
        if self._sql is not None:
            self._sql.close()

    # --- positions, liveness and lag ---------------------------------------------------------------

    @property
    def acknowledged_lsn(self) -> int:
        """The position last reported as flushed: the slot's confirmed_flush_lsn follows it."""
        return self._progress.acknowledged

    @property
    def keepalives_received(self) -> int:
        return self._stream.keepalives if self._stream is not None else 0

    def slot_lag_bytes(self, timeout_s: float = 5.0) -> int:
        """WAL the server keeps for this slot: pg_current_wal_lsn() - confirmed_flush_lsn. Asked from the
        pipeline's loop (metrics): a server that does not answer holds it up at most `timeout_s`."""
        assert self._sql is not None
        rows = self._sql.query("slot lag", SLOT_LAG_SQL.replace("%s", "$1"), (self._settings.slot_name,),
                               timeout_s=timeout_s)
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def _on_keepalive(self, wal_end: int) -> None:
        """An idle bridge confirms a keepalive's WAL end at once (progress.py): PostgreSQL's shutdown waits
        for that, and the reply to the keepalive, if it asks for one, then carries it."""
        if self._progress.keepalive(wal_end, self._assembler.in_transaction):
            self._send_status()

    def keep_alive(self) -> None:
        """While the pipeline works through one large transaction: report the acknowledged position every
        status_interval_s. The server ends a stream that sends nothing for wal_sender_timeout, and counts any
        status message as the reply its keepalives ask for, so this suffices; messages it sends meanwhile
        wait in the socket (it sends no more than the socket takes) and are read at the next poll. During the
        initial snapshot there is no stream to keep alive (wal_sender_timeout applies to streaming only)."""
        if self._stream is not None and time.monotonic() - self._last_status >= self._settings.status_interval_s:
            self._send_status()

    def _keep_alive(self) -> None:
        """Every status_interval_s: the position, a look at the SQL connection and at the stream's silence;
        every few seconds the slot's restart_lsn; and a heartbeat when no transaction arrived for
        heartbeat_interval_s: its message flows through the pipeline and its acknowledgement lets a quiet
        database's slot advance, and its coming back shows the stream is alive."""
        now = time.monotonic()
        sql_conn = self._sql
        assert sql_conn is not None
        if now - self._last_status >= self._settings.status_interval_s:
            self._send_status()
        if now - self._last_check >= self._settings.status_interval_s:
            self._last_check = now
            sql_conn.check()
            self._watch_silence(now)
        if now - self._last_slot_read >= SLOT_READ_INTERVAL_S:
            self._last_slot_read = now
            sql_conn.send("slot state", _SLOT_STATE_SQL, (self._settings.slot_name,), on_rows=self._slot_state)
        if now - max(self._last_arrival, self._last_heartbeat) >= self._settings.heartbeat_interval_s:
            if sql_conn.send("heartbeat", _HEARTBEAT_SQL, (HEARTBEAT_PREFIX,), on_error=_heartbeat_refused):
                self._last_heartbeat = now

    def _slot_state(self, rows: list[tuple[str | None, ...]]) -> None:
        if rows and rows[0][0]:
            self._restart_lsn = max(self._restart_lsn, parse_lsn(rows[0][0]))

    def _watch_silence(self, now: float) -> None:
        """A warning every silence_warning_s while neither data nor a keepalive arrives; a line when it ends."""
        assert self._stream is not None
        silent = now - self._stream.last_received
        limit = self._settings.silence_warning_s
        if silent >= limit:
            if self._silence_warned_at is None or now - self._silence_warned_at >= limit:
                self._silence_warned_at = now
                log.warning(
                    f"replication stream silent for {silent:.0f} s: no data and no keepalive from the walsender "
                    "(application_name cdc-bridge-stream); waiting for it. The heartbeat should come back every "
                    "heartbeat_interval_s: the server may be paused or overloaded, or the network down",
                    extra={"silent_s": round(silent, 1), "where": self._where, "slot": self._settings.slot_name,
                           "waiting_for": "data or a keepalive from the walsender"})
        elif self._silence_warned_at is not None:
            self._silence_warned_at = None
            log.info("replication stream resumed after being silent", extra={"where": self._where})

    def _send_status(self) -> None:
        """Keep the position on disk, then report it: what the server is told never runs ahead of the file."""
        self._last_status = time.monotonic()
        acknowledged = self._progress.acknowledged
        if acknowledged and self._stream is not None:
            if self._positions is not None and self._identity is not None:
                self._positions.save(self._identity, self._settings.slot_name, acknowledged)
            self._stream.send_status(acknowledged)


def _heartbeat_refused(error: SqlFailed) -> None:
    if error.sqlstate == "42501":
        log.warning("heartbeat refused: grant EXECUTE on pg_logical_emit_message or use a REPLICATION role",
                    extra={"error": str(error)})
    else:
        log.warning("heartbeat failed", extra={"error": str(error)})


def _is_heartbeat(transaction: Transaction) -> bool:
    changes = transaction.changes
    if type(changes) is tuple and changes and changes[0].op is not Op.MESSAGE:
        return False  # (the common case, without the generator below)
    return bool(changes) and all(
        change.op is Op.MESSAGE and change.key == {"prefix": HEARTBEAT_PREFIX} for change in transaction.changes)

