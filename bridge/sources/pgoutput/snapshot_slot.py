"""The direct source's slot under source.snapshot: initial: created with an exported snapshot, or redone.

    slot = plan_slot(conn, settings, tables, marker_file, where)   # may drop the slot of an interrupted snapshot
    prepare(conn, settings, tables, where, create_slot=slot)        # setup.py calls it only when the slot is missing
    slot.opened                                                      # the imported snapshot, when it created the slot

The slot is created over a replication connection (CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')), the
snapshot imported by a SnapshotReader's transaction, and the exporting connection closed at once: the slot is
permanent, and the reading transaction keeps the snapshot to its end. The marker (snapshot_marker.py) is
written as incomplete before the slot exists, so a bridge that dies at any moment after is known to have
created it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors

from bridge.errors import ConfigurationError
from bridge.settings import PgOutputSource
from bridge.snapshot import SnapshotReader, export_snapshot
from bridge.sources.pgoutput.changes import PRIMARY_KEYS_SQL, primary_keys_from_rows
from bridge.sources.pgoutput.protocol import lsn_text
from bridge.sources.pgoutput.setup import first_line
from bridge.sources.pgoutput.snapshot_marker import MarkerFile, SnapshotMarker, Start, needs_system_id, plan_start
from bridge.sources.pgoutput.stream import ReplicationStream, SlotInUse
from bridge.sources.pgoutput.values import SESSION_SETTINGS

log = logging.getLogger("bridge.sources.pgoutput.source")

_SLOT_EXISTS_SQL = "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s"


@dataclass(frozen=True, slots=True)
class OpenedSnapshot:
    """The slot's exported snapshot, imported: read it before streaming the slot."""

    reader: SnapshotReader
    marker: SnapshotMarker


def plan_slot(conn: psycopg.Connection[Any], settings: PgOutputSource, tables: Sequence[str],
              marker_file: MarkerFile | None, where: str) -> SnapshotSlot | None:
    """Decide how this start gets its slot (snapshot_marker.plan_start) and drop the slot of an interrupted
    snapshot; the creator to give setup.prepare when a new slot takes a snapshot, else None."""
    if marker_file is None:
        return None  # (source.snapshot: never without a place for a marker: nothing to read or keep)
    exists = conn.execute(_SLOT_EXISTS_SQL, (settings.slot_name,)).fetchone() is not None
    marker = marker_file.read()
    system_id = None
    if needs_system_id(settings.snapshot, settings.slot_name, slot_exists=exists, marker=marker):
        system_id = _system_id(settings, where)
    plan = plan_start(settings.snapshot, settings.slot_name, slot_exists=exists, marker=marker, system_id=system_id)
    if plan.warning:
        log.warning(plan.warning, extra={"slot": settings.slot_name, "start": plan.start.value, "epoch": plan.epoch})
    if plan.start is Start.REDO:
        if not settings.create_slot:
            raise ConfigurationError(
                f"the initial snapshot of slot {settings.slot_name!r} on {where} was interrupted and must be redone, "
                "which drops the slot and creates it again, but source.create_slot is false: set it to true, or "
                "set source.snapshot: never to stream the slot without the rows the snapshot did not read")
        _drop_slot(conn, settings, where)
    if settings.snapshot != "initial":
        return None
    return SnapshotSlot(settings, tables, marker_file, epoch=plan.epoch, previous=marker, where=where)


class SnapshotSlot:
    """setup.prepare's way of creating the missing slot: with an exported snapshot, imported by a reader."""

    def __init__(self, settings: PgOutputSource, tables: Sequence[str], marker_file: MarkerFile, *, epoch: int,
                 previous: SnapshotMarker | None, where: str) -> None:
        self._settings, self._tables, self.marker_file = settings, tuple(tables), marker_file
        self._epoch, self._previous, self._where = epoch, previous, where
        self.opened: OpenedSnapshot | None = None

    def __call__(self, conn: psycopg.Connection[Any]) -> None:
        settings = self._settings
        _require_keys(conn, settings.schema_name, self._tables, self._where)
        written: list[SnapshotMarker] = []

        def mark_incomplete(stream: ReplicationStream) -> None:
            marker = SnapshotMarker(settings.slot_name, stream.identify_system().system_id, self._epoch)
            self.marker_file.write(marker)  # before the slot exists: whenever the bridge dies after, the slot is ours
            written.append(marker)

        try:
            exported = export_snapshot(settings.dsn, settings.slot_name, temporary=False, where=self._where,
                                       connect_timeout_s=settings.connect_timeout_s, before_create=mark_incomplete)
        except ConfigurationError:
            if written:  # the server refused (the slot exists already, no privilege, no free slot): not ours
                self.marker_file.restore(self._previous)
            raise
        try:
            marker = written[0].at_cut(exported.cut_lsn)
            self.marker_file.write(marker)
            reader = SnapshotReader.open(settings.dsn, exported.snapshot_name, where=self._where,
                                         connect_timeout_s=settings.connect_timeout_s)
        finally:
            exported.release()  # imported (or failed): the permanent slot does not need its exporting connection
        self.opened = OpenedSnapshot(reader, marker)
        log.info("replication slot created with an exported snapshot", extra={
            "slot": settings.slot_name, "cut": lsn_text(exported.cut_lsn), "epoch": marker.epoch})


def _require_keys(conn: psycopg.Connection[Any], schema: str, tables: Sequence[str], where: str) -> None:
    """Before the slot exists: a table the snapshot cannot read (no primary key) would fail every attempt."""
    keys = primary_keys_from_rows(conn.execute(PRIMARY_KEYS_SQL).fetchall())
    if missing := [t for t in tables if not keys.get(f"{schema}.{t}")]:
        names = ", ".join(f"{schema}.{t}" for t in missing)
        raise ConfigurationError(
            f"table(s) {names} on {where} have no primary key: the initial snapshot reads rows in key order and "
            f"names their events by key. Add one (ALTER TABLE {schema}.{missing[0]} ADD PRIMARY KEY (...)), or set "
            "source.snapshot: never to publish only changes made after the slot is created")


def _system_id(settings: PgOutputSource, where: str) -> str:
    """IDENTIFY_SYSTEM over a short replication connection: it needs no privilege the source lacks."""
    stream = ReplicationStream(settings.dsn, where=where, session_options=SESSION_SETTINGS,
                               application_name="cdc-bridge-setup", connect_timeout_s=settings.connect_timeout_s)
    try:
        return stream.identify_system().system_id
    finally:
        stream.close()


def _drop_slot(conn: psycopg.Connection[Any], settings: PgOutputSource, where: str) -> None:
    """Drop the slot; one still held by the walsender of a bridge that just died is waited for (slot_busy_wait_s)."""
    deadline = time.monotonic() + settings.slot_busy_wait_s
    while True:
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (settings.slot_name,))
            log.info("replication slot of the interrupted snapshot dropped", extra={"slot": settings.slot_name})
            return
        except psycopg.errors.UndefinedObject:
            return  # gone meanwhile
        except psycopg.errors.ObjectInUse as exc:
            if time.monotonic() >= deadline:
                raise SlotInUse(f"replication slot {settings.slot_name!r} on {where} is in use ({first_line(exc)}), "
                                "so the interrupted snapshot cannot be redone: is another bridge running with the "
                                "same source.slot_name?") from exc
            time.sleep(1.0)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigurationError(
                f"cannot drop replication slot {settings.slot_name!r} on {where} to redo its interrupted initial "
                f"snapshot: {first_line(exc)}. The user needs the REPLICATION attribute") from exc
