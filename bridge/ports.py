"""The seams between the pipeline and its adapters: a change source and an event sink.

A source hands out units of work in commit order and is told when each is done; only then may it
acknowledge the position (commit Kafka offsets, advance a replication slot). A sink publishes
asynchronously and reports each delivery through a callback, which may run on another thread; a
record over its per-record maximum is reported there as RecordTooLarge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from bridge.changes import SourcePosition, Transaction
from bridge.errors import ChangeError
from bridge.events import DomainEvent


@dataclass(frozen=True, slots=True)
class UndecodableRow:
    """A row of a transaction that could not be decoded: dead-lettered as part of that transaction's unit,
    so the transaction still completes (incomplete) and the row's position moves on with it."""

    where: str  # "topic/partition/offset"
    error: ChangeError
    raw: dict[str, Any]  # the original record, for its dead letter
    total_order: int  # its place in the transaction


@dataclass(slots=True)
class SourceUnit:
    """One thing to handle: a complete transaction, or a record that could not be decoded."""

    transaction: Transaction | None
    handle: Any  # the source's own bookkeeping; given back in `done`
    error: ChangeError | None = None  # set when the record could not be turned into a transaction
    raw: dict[str, Any] = field(default_factory=dict)  # the original record, for dead letters
    heartbeat: bool = False  # the source's own keep-alive: acknowledged like any unit, but not activity
    # rule id -> why it must not translate this unit (the table changed under it): its changes are dead-lettered
    stopped_rules: Mapping[str, str] = field(default_factory=dict)
    # Rows of `transaction` that could not be decoded: it is incomplete, translated without them, and
    # their dead letters are part of this unit.
    dead_lettered: tuple[UndecodableRow, ...] = ()

    @property
    def incomplete(self) -> bool:
        return bool(self.dead_lettered)


class ChangeSource(Protocol):
    def poll(self, timeout_s: float) -> list[SourceUnit]:
        """Units ready for translation, in commit order. May raise ChangeError for a stalled stream."""

    def done(self, unit: SourceUnit) -> None:
        """Every event derived from `unit` is acknowledged by the sink (or there were none)."""

    def commit(self) -> SourcePosition | None:
        """Acknowledge all done units to the upstream; return the position everything before is safe at."""

    def pending(self) -> int:
        """Records read but not yet done (held for assembly or waiting for delivery): 0 means idle."""

    def keep_alive(self) -> None:
        """The pipeline is busy with one large unit and will not poll for a while: keep the upstream
        connection from timing out (without handing out or acknowledging anything)."""

    def close(self) -> None: ...


@runtime_checkable
class ReplaysFromFloor(Protocol):
    """A source whose upstream may, after its own restart, resend changes older than what was committed (a
    PostgreSQL slot that moved back): the prior-row store must keep history back to this floor."""

    def replay_floor(self) -> SourcePosition | None: ...


DeliveryCallback = Callable[[Exception | None], None]


class EventSink(Protocol):
    def publish(self, event: DomainEvent, on_delivery: DeliveryCallback) -> None: ...

    def publish_dead_letter(self, record: dict[str, Any], key: bytes | None, on_delivery: DeliveryCallback) -> None: ...

    # Both publish methods report a record larger than the sink takes as RecordTooLarge through
    # `on_delivery`, before sending anything: the pipeline then publishes a bounded dead letter instead.

    def flush(self, timeout_s: float) -> None: ...

    def close(self) -> None: ...
