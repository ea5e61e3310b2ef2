"""`cdc-bridge run` with the direct source (pgoutput) on one test database, publishing to its own topics,
and what end-to-end tests ask of it: its slot exists, it caught up, the events and dead letters it published."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bridge.sources.pgoutput.protocol import parse_lsn
from tests.support.bridge_process import BridgeProcess, write_e2e_config
from tests.support.kafka_reading import read_all
from tests.support.pgoutput_source import drop_slot

AGGREGATES = ("customer", "menu_item", "order")


def snapshot_complete(marker: Path) -> bool:
    """The initial snapshot's marker file says it finished (bridge/sources/pgoutput/snapshot_marker.py)."""
    try:
        return json.loads(marker.read_text()).get("complete") is True
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-replace
        return False


class DirectRun:
    """The bridge reading `dsn` directly and publishing to Kafka at `bootstrap_servers`; `sink` and `pipeline`
    add settings (a short delivery timeout, an outage limit); `client` is the sink's producer library, run in a
    second process with `separate_process`."""

    def __init__(self, bootstrap_servers: str, dsn: str, tmp_path: Path, *, sink: dict[str, Any] | None = None,
                 pipeline: dict[str, Any] | None = None, client: str = "kafka-python",
                 separate_process: bool = False) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.bootstrap_servers, self.dsn = bootstrap_servers, dsn
        self.slot = f"e2e_{suffix}"
        self.out = f"direct{suffix}"
        self.config = write_e2e_config(
            tmp_path,
            source={"kind": "pgoutput", "dsn": dsn, "slot_name": self.slot, "publication_name": self.slot,
                    "heartbeat_interval_s": 1.0},
            sink={"bootstrap_servers": bootstrap_servers, "topic_template": self.out + ".{aggregate_type}",
                  "dead_letter_topic": f"{self.out}.dead-letters", "client": client,
                  "separate_process": separate_process, **(sink or {})},
            pipeline=pipeline)
        self.log = tmp_path / "bridge.log"
        self.marker = tmp_path / "prior-rows.snapshot.json"  # the initial snapshot's, beside state.path

    def bridge(self) -> BridgeProcess:
        return BridgeProcess(self.config, self.log).start()

    def _confirmed_flush(self) -> int | None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                               (self.slot,)).fetchone()
        return None if row is None or row[0] is None else parse_lsn(row[0])

    def wait_for_slot(self, bridge: BridgeProcess, timeout_s: float = 60) -> None:
        """The bridge created its slot: traffic from now on is captured."""
        deadline = time.monotonic() + timeout_s
        while self._confirmed_flush() is None:
            assert bridge.alive(), bridge.log()[-3000:]
            assert time.monotonic() < deadline, f"no slot {self.slot} after {timeout_s}s:\n{bridge.log()[-3000:]}"
            time.sleep(0.2)

    def wait_for_snapshot(self, bridge: BridgeProcess, timeout_s: float = 60) -> None:
        """The bridge finished its initial snapshot (its marker says complete): it streams from now on."""
        deadline = time.monotonic() + timeout_s
        while not snapshot_complete(self.marker):
            assert bridge.alive(), bridge.log()[-3000:]
            assert time.monotonic() < deadline, f"no complete snapshot after {timeout_s}s:\n{bridge.log()[-3000:]}"
            time.sleep(0.2)

    def wait_caught_up(self, bridge: BridgeProcess, timeout_s: float = 180) -> None:
        """The slot is confirmed past everything written so far: every event is acknowledged by Kafka."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            target = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        deadline = time.monotonic() + timeout_s
        while (flushed := self._confirmed_flush() or 0) < target:
            assert bridge.alive(), f"the bridge exited early:\n{bridge.log()[-4000:]}"
            assert time.monotonic() < deadline, f"not caught up within {timeout_s}s:\n{bridge.log()[-4000:]}"
            time.sleep(0.3)
        assert flushed >= target

    def events(self) -> list:
        return read_all(self.bootstrap_servers, [f"{self.out}.{a}" for a in AGGREGATES])

    def dead_letters(self) -> list:
        return read_all(self.bootstrap_servers, [f"{self.out}.dead-letters"])

    def drop_slot(self) -> None:
        drop_slot(self.dsn, self.slot)
