"""Contracts on the real stack: real legacy rows that break a contract are never published.

The restaurant mappings are copied with a stricter CustomerSignedUp contract (`phone` not nullable), while
the legacy app writes customers without a phone. `cdc-bridge run` (a child process: source pgoutput on a
real PostgreSQL, sink the local event log) then:

- policy dead_letter: publishes the customers with a phone (ce_dataschema naming the revision), dead-letters
  each one without (the dead letter names the contract, the field `phone` and the reason), and publishes
  every other event of those transactions, all counted against the database;
- policy stop: exits non-zero naming the contract and the field, having published nothing of the offending
  transaction, with the slot not moved past it: a restart with the contract fixed publishes it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.settings import Settings
from tests.conftest import legacy_database
from tests.support.bridge_process import BridgeProcess, write_config
from tests.support.direct_bridge import confirmed_flush, current_wal_lsn, log_records
from tests.support.local_stack import REPO_ROOT, PostgresInfo
from tests.support.pgoutput_source import drop_slot

SIGNED_UP = "restaurant.customer.CustomerSignedUp"
SCHEMA = f"urn:cdc-bridge:contract:{SIGNED_UP}:1.0"


@pytest.fixture
def legacy_dsn(pg18_server: PostgresInfo) -> Iterator[str]:
    """A migrated legacy database on a PostgreSQL of its own (no Kafka needed: the sink is the local log)."""
    with legacy_database(pg18_server.admin_dsn) as dsn:
        yield dsn


def strict_mappings(folder: Path, *, policy: str = "dead_letter") -> Path:
    """mappings/ (restaurant.yaml, contracts/) copied to `folder`, CustomerSignedUp's phone made required
    non-null, and the file's on_error set to `policy`."""
    shutil.copytree(REPO_ROOT / "mappings" / "contracts", folder / "contracts")
    mapping = (REPO_ROOT / "mappings" / "restaurant.yaml").read_text()
    assert "\non_error: dead_letter\n" in mapping
    (folder / "restaurant.yaml").write_text(mapping.replace("\non_error: dead_letter\n", f"\non_error: {policy}\n"))
    contract = folder / "contracts" / "customer" / "CustomerSignedUp.yaml"
    text = contract.read_text()
    loose = "      phone:\n        type: string\n        nullable: true\n"
    assert loose in text
    contract.write_text(text.replace(loose, "      phone:\n        type: string\n"))
    return folder / "restaurant.yaml"


def relax(mapping: Path) -> None:
    """The contract fixed again: phone nullable."""
    contract = mapping.parent / "contracts" / "customer" / "CustomerSignedUp.yaml"
    contract.write_text(contract.read_text().replace("      phone:\n        type: string\n",
                                                     "      phone:\n        type: string\n        nullable: true\n"))


class Run:
    """`cdc-bridge run` over `dsn` with `mapping`, its own slot and a local event log in `workdir`."""

    def __init__(self, dsn: str, mapping: Path, workdir: Path, slot: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.dsn, self.slot, self.workdir = dsn, slot, workdir
        document = dict(
            source_id="legacy-restaurant", mappings=[str(mapping)],
            source={"kind": "pgoutput", "dsn": dsn, "slot_name": slot, "publication_name": slot,
                    "heartbeat_interval_s": 0.5, "status_interval_s": 0.2},
            sink={"kind": "locallog", "path": str(workdir / "events"), "fsync_interval_ms": 1.0},
            state={"path": str(workdir / "prior-rows.sqlite")},
            pipeline={"commit_interval_s": 0.3},
            logging={"level": "INFO", "format": "json"})
        self.config = write_config(workdir / "bridge.yaml", **document)
        self.settings = Settings(**document)
        self.log = workdir / "bridge.log"

    def start(self) -> BridgeProcess:
        bridge = BridgeProcess(self.config, self.log).start()
        deadline = time.monotonic() + 60
        while confirmed_flush(self.dsn, self.slot) is None:
            assert bridge.alive(), bridge.log()[-3000:]
            assert time.monotonic() < deadline, f"no slot after 60 s:\n{bridge.log()[-3000:]}"
            time.sleep(0.1)
        return bridge

    def wait_caught_up(self, bridge: BridgeProcess, timeout_s: float = 60) -> None:
        target = current_wal_lsn(self.dsn)
        deadline = time.monotonic() + timeout_s
        while (confirmed_flush(self.dsn, self.slot) or 0) < target:
            assert bridge.alive(), f"the bridge exited:\n{bridge.log()[-4000:]}"
            assert time.monotonic() < deadline, f"not caught up in {timeout_s} s:\n{bridge.log()[-4000:]}"
            time.sleep(0.1)

    def events(self) -> list[Any]:
        return log_records(self.settings)

    def dead_letters(self) -> list[dict[str, Any]]:
        return [json.loads(record.value) for record in log_records(self.settings, dead_letters=True)]

    def drop_slot(self) -> None:
        drop_slot(self.dsn, self.slot)


def checkout(dsn: str, tag: str, phones: list[str | None]) -> int:
    """One legacy transaction: a customer per phone (None: the customer gave none), an address of each, a
    menu item: what the legacy app writes when people sign up. Returns the transaction's end LSN."""
    with psycopg.connect(dsn) as conn:
        for index, phone in enumerate(phones):
            [(customer,)] = conn.execute(
                "INSERT INTO customers (email, full_name, phone) VALUES (%s, %s, %s) RETURNING id",
                (f"{tag}-{index}@example.com", f"Customer {tag} {index}", phone)).fetchall()
            conn.execute("INSERT INTO customer_addresses (customer_id, label, street, city, postal_code, country, "
                         "is_default) VALUES (%s, 'home', '1 Main St', 'Springfield', '12345', 'US', true)",
                         (customer,))
        conn.execute("INSERT INTO menu_items (name, description, price, category) VALUES (%s, 'good', 4.5, 'mains')",
                     (f"dish {tag}",))
        conn.commit()
        return current_wal_lsn(dsn)


def kinds(records: list[Any]) -> Counter[str]:
    return Counter((record.type or "").split(".")[2] for record in records)


def test_rows_breaking_a_contract_are_dead_lettered_and_everything_else_is_published(
        legacy_dsn: str, tmp_path: Path) -> None:
    run = Run(legacy_dsn, strict_mappings(tmp_path / "mappings"), tmp_path / "run", "contracts_dl")
    bridge = run.start()
    try:
        checkout(legacy_dsn, "a", ["+1 555 0100", None, "+1 555 0101"])
        checkout(legacy_dsn, "b", [None, None])
        checkout(legacy_dsn, "c", ["+1 555 0102"])
        run.wait_caught_up(bridge)
        assert bridge.stop() == 0, bridge.log()[-3000:]
    finally:
        if bridge.alive():
            bridge.kill()
        run.drop_slot()
    with psycopg.connect(legacy_dsn) as conn:
        with_phone, without_phone, addresses, items = conn.execute(
            "SELECT (SELECT count(*) FROM customers WHERE phone IS NOT NULL), "
            "(SELECT count(*) FROM customers WHERE phone IS NULL), (SELECT count(*) FROM customer_addresses), "
            "(SELECT count(*) FROM menu_items)").fetchone()
        phoneless = {row[0] for row in conn.execute("SELECT id FROM customers WHERE phone IS NULL")}
    assert (with_phone, without_phone, addresses, items) == (3, 3, 6, 3)

    events = run.events()
    assert kinds(events) == {"CustomerSignedUp": with_phone, "AddressAdded": addresses, "MenuItemAdded": items}
    signed_up = [record for record in events if record.type == f"{SIGNED_UP}.v1"]
    assert all(json.loads(record.value)["phone"] for record in signed_up)
    assert {dict(record.headers)["ce_dataschema"] for record in signed_up} == {SCHEMA.encode()}
    assert {json.loads(r.value)["customerId"] for r in events if r.type.endswith("AddressAdded.v1")} >= phoneless, \
        "the addresses of customers whose sign-up was withheld are still published"

    letters = run.dead_letters()
    assert len(letters) == without_phone
    assert {letter["change"]["key"]["id"] for letter in letters} == phoneless
    for letter in letters:
        assert (letter["kind"], letter["rule"]) == ("translation_failed", "customers.signed_up")
        assert letter["error"] == (f"event {SIGNED_UP}.v1 does not obey its contract {SCHEMA}: field 'phone': "
                                   "Input should be a valid string (got null)")


def test_under_policy_stop_the_bridge_stops_on_the_violation_and_publishes_it_once_the_contract_is_fixed(
        legacy_dsn: str, tmp_path: Path) -> None:
    mapping = strict_mappings(tmp_path / "mappings", policy="stop")
    run = Run(legacy_dsn, mapping, tmp_path / "run", "contracts_stop")
    bridge = run.start()
    second: BridgeProcess | None = None
    try:
        checkout(legacy_dsn, "ok", ["+1 555 0200"])
        run.wait_caught_up(bridge)
        assert kinds(run.events()) == {"CustomerSignedUp": 1, "AddressAdded": 1, "MenuItemAdded": 1}
        end_of_bad = checkout(legacy_dsn, "bad", ["+1 555 0201", None])
        assert bridge.process is not None
        exit_code = bridge.process.wait(timeout=60)
        assert exit_code != 0, bridge.log()[-3000:]
        log = bridge.log()
        [reason] = [line for line in log.splitlines() if line.startswith("cdc-bridge: ")]
        assert reason.startswith("cdc-bridge: rule 'customers.signed_up' failed on public.customers at "), reason
        assert (f": event {SIGNED_UP}.v1 does not obey its contract {SCHEMA}: field 'phone': Input should be a valid "
                "string (got null). Policy is 'stop'") in reason, reason
        assert "Traceback" not in log
        assert kinds(run.events()) == {"CustomerSignedUp": 1, "AddressAdded": 1, "MenuItemAdded": 1}, \
            "nothing of the offending transaction was published"
        assert run.dead_letters() == [], "under stop, nothing is dead-lettered"
        assert (confirmed_flush(legacy_dsn, run.slot) or 0) < end_of_bad, "the slot moved past the transaction"

        relax(mapping)  # the contract fixed: phone may be null
        second = run.start()
        run.wait_caught_up(second)
        assert second.stop() == 0, second.log()[-3000:]
    finally:
        for process in (bridge, second):
            if process is not None and process.alive():
                process.kill()
        run.drop_slot()
    events = run.events()
    assert kinds(events) == {"CustomerSignedUp": 3, "AddressAdded": 3, "MenuItemAdded": 2}
    phones = [json.loads(r.value)["phone"] for r in events if r.type == f"{SIGNED_UP}.v1"]
    assert phones == ["+1 555 0200", "+1 555 0201", None]
    assert run.dead_letters() == []
