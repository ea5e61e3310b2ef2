"""The initial snapshot's marker file, and what a start of the direct source does given it and the slot.

    marker = MarkerFile(path).read()                     # None: there is no file
    plan = plan_start(settings.snapshot, slot, slot_exists=..., marker=marker, system_id=...)

The marker is written as incomplete before the slot is created, and as complete once every row of the
snapshot was acknowledged by the sink. A slot it names as incomplete was created by this bridge for a
snapshot that never finished (kill -9, an outage, a stop): streaming it would lose the rows the snapshot did
not get to, so it is dropped and created again, with the next epoch (events.snapshot_event_id: the redo's
ids never repeat the interrupted attempt's, whose rows may have changed since). A slot with no marker of its
own (made before this feature, or by an operator) is streamed as it is. Pure but for MarkerFile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from bridge.errors import ConfigurationError
from bridge.private_files import replace_privately
from bridge.sources.pgoutput.protocol import lsn_text, parse_lsn


@dataclass(frozen=True, slots=True)
class SnapshotMarker:
    """One initial snapshot: of which slot on which cluster, at which cut, which attempt, and whether it finished."""

    slot: str
    system_id: str  # IDENTIFY_SYSTEM's: a slot of the same name on another cluster is not this one
    epoch: int
    cut_lsn: int | None = None  # None until the slot exists (or when the bridge died as it was created)
    complete: bool = False

    @property
    def cut_text(self) -> str:
        return lsn_text(self.cut_lsn) if self.cut_lsn is not None else "not known"

    def at_cut(self, cut_lsn: int) -> SnapshotMarker:
        return replace(self, cut_lsn=cut_lsn)

    def completed(self) -> SnapshotMarker:
        return replace(self, complete=True)

    def as_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "system_id": self.system_id, "epoch": self.epoch,
                "cut": lsn_text(self.cut_lsn) if self.cut_lsn is not None else None, "complete": self.complete}

    @classmethod
    def from_dict(cls, data: Any) -> SnapshotMarker:
        """ValueError when `data` is not a marker."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        slot, system_id, epoch, cut, complete = (data.get(k) for k in ("slot", "system_id", "epoch", "cut", "complete"))
        if not isinstance(slot, str) or not isinstance(system_id, str) or not isinstance(complete, bool):
            raise ValueError("slot, system_id and complete are required")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a whole number >= 0, not {epoch!r}")
        if cut is not None and not isinstance(cut, str):
            raise ValueError(f"cut must be an LSN such as 0/16B3748, not {cut!r}")
        return cls(slot, system_id, epoch, parse_lsn(cut) if cut is not None else None, complete)


class MarkerFile:
    """The marker as a small JSON file, replaced atomically and readable by its owner only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> SnapshotMarker | None:
        """The marker, or None when there is no file. A file that cannot be read stops the start: guessing could
        stream a slot whose snapshot never finished, losing rows."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unreadable(exc.strerror or str(exc)) from exc
        try:
            return SnapshotMarker.from_dict(json.loads(text))
        except ValueError as exc:
            raise self._unreadable(f"not a marker: {exc}") from None

    def write(self, marker: SnapshotMarker) -> None:
        try:
            replace_privately(self.path, json.dumps(marker.as_dict(), indent=1) + "\n")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the initial snapshot's marker to {self.path} ({exc.strerror or exc}): make its folder "
                "writable by the bridge, or move it (it is kept beside source.acknowledged_path, else state.path)"
            ) from exc

    def restore(self, marker: SnapshotMarker | None) -> None:
        """Put back what the file said before (None: no file)."""
        if marker is not None:
            self.write(marker)
        else:
            self.path.unlink(missing_ok=True)

    def _unreadable(self, why: str) -> ConfigurationError:
        return ConfigurationError(
            f"the initial snapshot's marker {self.path} is unreadable ({why}). It says whether the snapshot read "
            "when the slot was created finished: restore it, or delete it to stream the slot as it is (rows an "
            "unfinished snapshot did not read are then not published)")


def marker_file(snapshot: str, path: Path | None) -> MarkerFile | None:
    """The marker's file; source.snapshot: initial cannot do without one."""
    if path is None and snapshot == "initial":
        raise ConfigurationError(
            "source.snapshot is initial, which needs a file recording whether the snapshot finished, and there is "
            "no place for it: set state.path or source.acknowledged_path (it is kept beside them), or set "
            "source.snapshot: never to publish only changes made after the slot is created")
    return MarkerFile(path) if path is not None else None


class Start(StrEnum):
    STREAM = "stream"  # the slot exists: stream it from where it is
    CREATE = "create"  # create the slot, no snapshot (source.snapshot: never)
    SNAPSHOT = "snapshot"  # create the slot with an exported snapshot; read every mapped table in it first
    REDO = "redo"  # drop the slot of an interrupted snapshot, then as SNAPSHOT


@dataclass(frozen=True, slots=True)
class StartPlan:
    start: Start
    epoch: int  # of the snapshot this start takes, should it create the slot
    interrupted: SnapshotMarker | None = None  # the marker of a snapshot of this slot that never finished
    warning: str | None = None  # what to tell the operator before going on


def needs_system_id(snapshot: str, slot: str, *, slot_exists: bool, marker: SnapshotMarker | None) -> bool:
    """Whether plan_start must know the server's system identifier (only to redo an interrupted snapshot)."""
    return (snapshot == "initial" and slot_exists and marker is not None and marker.slot == slot
            and not marker.complete)


def plan_start(snapshot: str, slot: str, *, slot_exists: bool, marker: SnapshotMarker | None,
               system_id: str | None) -> StartPlan:
    """What the start does; `marker` is the file's (of any slot), `system_id` the server's (see needs_system_id)."""
    ours = marker if marker is not None and marker.slot == slot else None
    # A slot created anew after any snapshot of the same name takes the next epoch: its ids never meet the old.
    epoch = ours.epoch + 1 if ours is not None else 0
    interrupted = ours if ours is not None and not ours.complete else None
    if snapshot == "never":
        if not slot_exists:
            return StartPlan(Start.CREATE, epoch)
        warning = None if interrupted is None else (
            f"the initial snapshot of slot {slot!r} (cut {interrupted.cut_text}) was interrupted before it finished, "
            "and source.snapshot is never: streaming the slot without it; rows the snapshot did not read are not "
            "published (set source.snapshot: initial to redo it)")
        return StartPlan(Start.STREAM, epoch, interrupted, warning)
    if not slot_exists:
        return StartPlan(Start.SNAPSHOT, epoch)
    if interrupted is None:
        return StartPlan(Start.STREAM, epoch)
    if interrupted.system_id != system_id:
        return StartPlan(Start.STREAM, epoch, None, (
            f"the initial snapshot marker names slot {slot!r} on another cluster (system {interrupted.system_id}, "
            f"this one is {system_id}): the slot here is not the one it was taken for, so it is streamed as it is"))
    return StartPlan(Start.REDO, epoch, interrupted, (
        f"the initial snapshot of slot {slot!r} (cut {interrupted.cut_text}, epoch {interrupted.epoch}) was "
        f"interrupted before it finished and is being redone: dropping the slot and creating it again with a new "
        f"snapshot (epoch {epoch}); events of the interrupted attempt may have been published, with other ids"))
