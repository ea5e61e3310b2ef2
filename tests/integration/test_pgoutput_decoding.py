"""pgoutput read from real PostgreSQL 15 and 18, decoded, and compared with the database and with Debezium.

Each test creates its own publication and pgoutput slot in a fresh database, writes, reads the slot
with pg_logical_slot_peek_binary_changes (proto_version 1, messages on) and decodes with
PgOutputAssembler. Expectations come from PostgreSQL itself (rows read back with psycopg) and, for
the recorded fixture workload, from real Debezium 3.6.1 output (tests/fixtures/debezium), decoded by
the Debezium path (decode_record + TransactionAssembler): the two sources must give equal RowChange
values, column by column. The only differences are Debezium's own losses in its default
decimal.handling.mode=precise, listed in DEBEZIUM_PRECISE_LOSSES; its string mode agrees with
pgoutput on those too (checked below).

Every test but the live-Debezium one runs on both servers (ids [pg15], [pg18]; legacy_db_any in
tests/conftest.py); live Debezium runs only beside the session stack's PostgreSQL 15.
"""

from __future__ import annotations

import base64
import math
import sys
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import psycopg
import psycopg.rows

from bridge.changes import UNKNOWN, Op, RowChange, Transaction
from bridge.sources.debezium.records import (
    ChangeRecord,
    DecodeOptions,
    TransactionMarker,
    decode_record,
)
from bridge.sources.pgoutput.changes import (
    PRIMARY_KEYS_SQL,
    PgOutputAssembler,
    primary_keys_from_rows,
)
from bridge.sources.pgoutput.protocol import Update, parse_lsn, parse_message
from bridge.sources.pgoutput.values import SESSION_SETTINGS, USER_TYPES_SQL, UserType
from bridge.sources.transactions import TransactionAssembler
from legacy_db.simulate import run_simulation
from tests.conftest import DebeziumCapture
from tests.fixtures.debezium import fixture_io
from tests.support.kafka_reading import payload, wait_for
from tests.support.local_stack import REPO_ROOT, StackInfo

# The fixture modules import each other by bare name, as record_fixtures.py runs them.
sys.path.insert(0, str(REPO_ROOT / "tests" / "fixtures" / "debezium"))
import fixture_schema  # noqa: E402
import fixture_workload  # noqa: E402

PEEK = ("SELECT lsn, xid, data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', %s, "
        "'publication_names', %s, 'messages', 'true')")


# --- helpers ----------------------------------------------------------------------------------------


def open_slot(dsn: str, tables: str) -> tuple[str, str]:
    name = f"pgo_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE PUBLICATION {name} FOR TABLE {tables}")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
    return name, name


def peek(dsn: str, slot: str, publication: str, *, timezone: str = "UTC", version: int = 1
         ) -> list[tuple[int, int, bytes]]:
    with psycopg.connect(dsn, autocommit=True, options=f"{SESSION_SETTINGS} -c TimeZone={timezone}") as conn:
        rows = conn.execute(PEEK, (slot, str(version), publication))
        return [(parse_lsn(lsn), xid, bytes(data)) for lsn, xid, data in rows]


def assembler_for(dsn: str) -> PgOutputAssembler:
    with psycopg.connect(dsn, autocommit=True) as conn:
        types = [UserType.from_row(row) for row in conn.execute(USER_TYPES_SQL)]
        keys = primary_keys_from_rows(conn.execute(PRIMARY_KEYS_SQL).fetchall())
    return PgOutputAssembler(user_types=types, primary_keys=keys)


def decode(dsn: str, slot: str, publication: str, **kwargs: Any) -> list[Transaction]:
    assembler = assembler_for(dsn)
    stream = peek(dsn, slot, publication, **kwargs)
    return [tx for lsn, _, data in stream if (tx := assembler.feed(lsn, data, received_at=datetime.now(UTC)))]


def same(actual: Any, expected: Any) -> bool:
    """Equal and of the same type: Decimal exponent, float sign and NaN, time zone awareness count."""
    if isinstance(expected, list):
        return type(actual) is list and len(actual) == len(expected) and all(map(same, actual, expected))
    if isinstance(expected, dict) and type(actual) is dict:
        return actual.keys() == expected.keys() and all(same(actual[k], expected[k]) for k in expected)
    if isinstance(expected, Decimal) and type(actual) is Decimal:
        return (actual.is_nan() and expected.is_nan()) or (actual == expected and str(actual) == str(expected))
    if isinstance(expected, float) and type(actual) is float:
        return (math.isnan(actual) and math.isnan(expected)) or (
            actual == expected and math.copysign(1, actual) == math.copysign(1, expected))
    if isinstance(expected, (datetime, time)) and type(actual) is type(expected):
        return actual == expected and (actual.tzinfo is None) == (expected.tzinfo is None) and (
            actual.utcoffset() == expected.utcoffset())
    return type(actual) is type(expected) and actual == expected


def utc_times(value: Any) -> Any:
    """psycopg reads timetz with its offset; the decoders give the same instant of day in UTC."""
    if isinstance(value, list):
        return [utc_times(v) for v in value]
    if isinstance(value, time) and value.tzinfo is not None:
        return datetime.combine(date(2000, 1, 2), value).astimezone(UTC).timetz()
    return value


# --- every type ------------------------------------------------------------------------------------

TYPES_DDL = """
CREATE SCHEMA pgo;
CREATE TYPE pgo.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN pgo.amount AS numeric(12, 2);
CREATE TABLE pgo.all_types (
  id int PRIMARY KEY, n numeric(10,2), nu numeric, i2 int2, i4 int4, i8 int8, f4 real, f8 float8, b bool,
  t text, vc varchar(20), c char(4), nm name, d date, tm time, ttz timetz, ts timestamp, tstz timestamptz,
  u uuid, j json, jb jsonb, by bytea, e pgo.mood, dm pgo.amount,
  a_n numeric[], a_i2 int2[], a_i4 int4[], a_i8 int8[], a_f4 real[], a_f8 float8[], a_b bool[], a_t text[],
  a_vc varchar[], a_c char(2)[], a_nm name[], a_d date[], a_tm time[], a_ttz timetz[], a_ts timestamp[],
  a_tstz timestamptz[], a_u uuid[], a_j json[], a_jb jsonb[], a_by bytea[], a_e pgo.mood[], a_dm pgo.amount[],
  a_nested int4[], big text
);
ALTER TABLE pgo.all_types ALTER COLUMN big SET STORAGE EXTERNAL;
"""
ORDINARY = """(1, 12.30, 3.14159, 7, 70000, 7000000000, 1.5, 0.1, true, 'naïve café ☕', 'label', 'ab', 'pg_name',
  '2024-02-29', '13:45:30.123456', '13:45:30.5+02', '2024-02-29 13:45:30.123456', '2024-02-29 13:45:30.123456+02',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": [1, 2], "a": "x", "n": null}', '{"nested": {"k": true}}',
  '\\x0001feff', 'happy', 18.90, '{12.30,NaN,NULL}', '{-32768,32767}', '{1,NULL,3}', '{9223372036854775807}',
  '{0.25,NaN}', '{1e308,-Infinity,-0}', '{t,f,NULL}', '{a,"b c","q\\"d","NULL",NULL,"","{x}","a,b","back\\\\slash"}',
  '{" lead","trail "}', '{a,bc}', '{pg,"Name"}', '{2024-02-29,infinity,-infinity}', '{00:00:00,23:59:59.999999}',
  '{"13:45:30+02","23:00:00-05"}', '{"2024-02-29 13:45:30",infinity}', '{"2024-02-29 13:45:30+02",-infinity}',
  '{00000000-0000-0000-0000-000000000001}', ARRAY['{"a": 1}'::json, '[1, "two"]'::json],
  ARRAY['"s"'::jsonb, 'null'::jsonb], ARRAY['\\x00ff'::bytea, '\\x'::bytea, NULL], '{sad,NULL,happy}', '{1.10,2}',
  '{{1,2},{3,NULL}}', repeat('toast ', 2000))"""
EDGES = """(2, -99999999.99, 'NaN', -32768, -2147483648, -9223372036854775808, '-Infinity', 'NaN', false, '', '',
  'abcd', '', 'infinity', '00:00:00', '00:00:00-05:30', '-infinity', 'infinity',
  '00000000-0000-0000-0000-000000000000', '[1, "two", {"three": 3.5}]', '"just a string"', '\\x', 'sad', -0.01,
  '{}', '{}', '[0:1]={7,8}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
  '{}', '{}', '{}', '{}', '{}', '{{{1}},{{2}}}', '')"""
NUMERIC_INFINITY = ("(4, NULL, 'Infinity'), (5, NULL, '-Infinity'), "
                    "(6, NULL, '-123456789012345678901234567890.1234567890')")


def test_every_type_decodes_to_what_the_database_holds(legacy_db_any: str) -> None:
    dsn = legacy_db_any
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TYPES_DDL)
    slot, publication = open_slot(dsn, "pgo.all_types")
    with fixture_workload.connect(dsn) as conn:  # reads infinity as date.max & co, like the decoders
        conn.execute(f"INSERT INTO pgo.all_types VALUES {ORDINARY}, {EDGES}")
        conn.execute("INSERT INTO pgo.all_types (id) VALUES (3)")
        conn.execute(f"INSERT INTO pgo.all_types (id, n, nu) VALUES {NUMERIC_INFINITY}")
        conn.commit()
        conn.execute("UPDATE pgo.all_types SET t = 'updated' WHERE id = 1")  # big stays unchanged TOAST
        conn.commit()
        columns = [row["attname"] for row in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'pgo.all_types'::regclass AND attnum > 0")]
        casts = {"a_e": "a_e::text[] AS a_e", "a_dm": "a_dm::numeric[] AS a_dm"}  # psycopg has no loader for these
        select = ", ".join(casts.get(c, c) for c in columns)
        rows = {row["id"]: {k: utc_times(v) for k, v in row.items()}
                for row in conn.execute(f"SELECT {select} FROM pgo.all_types")}

    transactions = decode(dsn, slot, publication)
    assert len(transactions) == 2
    inserts = transactions[0].changes
    assert [c.op for c in inserts] == [Op.CREATE] * 6
    for change in inserts:
        row_id = change.key["id"]
        expected = {**rows[row_id], "t": "naïve café ☕"} if row_id == 1 else rows[row_id]
        for column, value in expected.items():
            assert same(change.after[column], value), f"row {row_id} {column}: {change.after[column]!r}, not {value!r}"
    (updated,) = transactions[1].changes
    assert updated.op is Op.UPDATE and updated.before is None and updated.after["big"] is UNKNOWN
    assert all(same(updated.after[c], rows[1][c]) for c in columns if c != "big")
    # The session's TimeZone changes PostgreSQL's text, not the decoded values.
    assert repr(decode(dsn, slot, publication, timezone="Asia/Kathmandu")) == repr(transactions)


# --- the recorded Debezium workload, replayed -------------------------------------------------------

# Debezium 3.6.1 with decimal.handling.mode=precise (its default) sends an unconstrained numeric as
# VariableScaleDecimal: NaN becomes null, and trailing zeros are stripped (scale 9, not PostgreSQL's 10).
# pgoutput keeps PostgreSQL's exact value, as Debezium's string mode does.
DEBEZIUM_PRECISE_LOSSES = {
    ("multi_statement", 0, "after", "amount"): (Decimal("NaN"), None),
    ("multi_statement", 1, "after", "amount"): (Decimal("NaN"), None),
    ("multi_statement", 4, "after", "amount"): (Decimal("NaN"), None),
    ("multi_statement", 5, "before", "amount"): (Decimal("NaN"), None),
    ("multi_statement", 5, "after", "amount"): (Decimal("NaN"), None),
    ("multi_statement", 6, "after", "amount"): (Decimal("-123456789012345678901234567890.1234567890"),
                                                Decimal("-123456789012345678901234567890.123456789")),
}


def debezium_transactions(mode: str) -> dict[int | None, Transaction]:
    """The recorded fixture, through the Debezium path, by xid (None: the non-transactional message)."""
    expected = fixture_io.load_expected()
    facts = expected["modes"][mode]
    declared = {f"legacy.{t}": {c: ("enum" if pg == "mood" else pg) for c, pg in expected["columns"].items()}
                for t in expected["tables"]}
    options = DecodeOptions(declared=None if facts["schemas_enable"] else declared, decimal_mode=facts["decimal_mode"],
                            time_mode=facts["time_mode"], replica_identity_full=frozenset({"legacy.fx_full"}))
    assembler, out = TransactionAssembler(), []
    for r in fixture_io.load_records(mode):
        record = decode_record(r.topic, r.partition, r.offset, r.key, r.value, r.headers, options=options)
        if isinstance(record, (ChangeRecord, TransactionMarker)):
            out += [done.transaction for done in assembler.add(((r.topic, r.partition), r.offset), record, 0)]
    return {tx.xid: tx for tx in out if not any(c.op is Op.READ for c in tx.changes)}


def compare_rows(mine: RowChange, theirs: RowChange, where: tuple[str, int], columns: set[str] | None = None
                 ) -> dict[tuple[str, int, str, str], tuple[Any, Any]]:
    """Column-by-column differences of before and after; ops, tables, keys and messages must be equal."""
    assert (mine.op, mine.schema, mine.table, mine.key, mine.old_key, mine.message) == (
        theirs.op, theirs.schema, theirs.table, theirs.key, theirs.old_key, theirs.message), where
    differences = {}
    for image in ("before", "after"):
        a, b = getattr(mine, image), getattr(theirs, image)
        assert (a is None) == (b is None), f"{where} {image}"
        if a is None:
            continue
        assert a.keys() == b.keys(), f"{where} {image}"
        for column in columns or a.keys():
            if not (a[column] is b[column] is UNKNOWN or same(a[column], b[column])):
                differences[(*where, image, column)] = (a[column], b[column])
    return differences


def test_the_recorded_workload_decodes_like_the_database_and_like_debezium(legacy_db_any: str) -> None:
    dsn = legacy_db_any
    with fixture_workload.connect(dsn) as conn:
        conn.execute(fixture_schema.ddl())
        for table in fixture_schema.TABLES:  # Debezium read these in its snapshot; here they precede the slot
            fixture_workload.insert(conn, table, fixture_schema.ordinary_row(1))
        conn.commit()
        slot, publication = open_slot(dsn, "legacy.fx_default, legacy.fx_full")
        steps = fixture_workload.run_workload(conn)
    mine = {tx.xid: tx for tx in decode(dsn, slot, publication)}
    recorded = fixture_io.load_expected()["steps"]
    assert [s["name"] for s in steps] == [s["name"] for s in recorded]

    # 1. Against the database: each statement's row as psycopg read it back (the recorder's own check).
    for step in fixture_io.decode_tagged(steps):
        changes = list(mine[step["xid"]].changes)
        assert len(changes) == len(step["changes"]), step["name"]
        for change, statement in zip(changes, step["changes"], strict=True):
            check_statement(change, statement, step["name"])

    # 2. Against Debezium (default precise mode), change by change, column by column.
    theirs = debezium_transactions("schema_precise_adaptive")
    differences = {}
    pairs = [(mine[a["xid"]], theirs[b["xid"]], a["name"]) for a, b in zip(steps, recorded, strict=True)]
    for my_tx, their_tx, name in [*pairs, (mine[None], theirs[None], "loose_message")]:
        assert len(my_tx.changes) == len(their_tx.changes), name
        for index, (a, b) in enumerate(zip(my_tx.changes, their_tx.changes, strict=True)):
            differences.update(compare_rows(a, b, (name, index)))
        # Positions differ between recording and replay; which changes share a WAL record must not.
        assert [c.position.seq for c in my_tx.changes] == [c.position.seq for c in their_tx.changes], name
        assert same_lsn_groups(my_tx) == same_lsn_groups(their_tx), name
    assert sorted(map(repr, differences.items())) == sorted(map(repr, DEBEZIUM_PRECISE_LOSSES.items()))  # NaN != NaN

    # 3. Debezium's string decimal mode keeps NaN and scale: there numerics agree exactly.
    strings = debezium_transactions("plain_string_connect")
    for a, b in zip(steps, recorded, strict=True):
        for index, (x, y) in enumerate(zip(mine[a["xid"]].changes, strings[b["xid"]].changes, strict=True)):
            assert compare_rows(x, y, (a["name"], index), {"price", "amount"}) == {}


def same_lsn_groups(tx: Transaction) -> list[int]:
    first_index: dict[int, int] = {}
    return [first_index.setdefault(c.position.change_lsn, i) for i, c in enumerate(tx.changes)]


def check_statement(change: RowChange, statement: dict[str, Any], step: str) -> None:
    where = f"{step} {statement['op']} {statement.get('table')}"
    if statement["op"] == "m":
        assert change.op is Op.MESSAGE and change.message is not None and change.message.transactional
        content = base64.b64decode(statement["content"])
        assert (change.message.prefix, change.message.content) == (statement["prefix"], content)
        return
    if statement["op"] == "t":
        assert (change.op, change.table, change.key) == (Op.TRUNCATE, statement["table"], None), where
        return
    full = statement["table"] == "fx_full"
    unknown = set() if full else set(statement.get("unchanged_toast") or ())

    def image(row: dict[str, Any], gone: set[str]) -> dict[str, Any]:
        return {c: UNKNOWN if c in gone else utc_times(v) for c, v in row.items()}

    def key_only(row: dict[str, Any]) -> dict[str, Any]:
        return {c: v if c == "id" else UNKNOWN for c, v in row.items()}

    op = {"c": Op.CREATE, "u": Op.UPDATE, "key_change": Op.UPDATE, "d": Op.DELETE}[statement["op"]]
    assert change.op is op, where
    if statement["after"] is not None:
        assert_image(change.after, image(statement["after"], unknown), where)
    if op is Op.CREATE:
        assert change.before is None
    elif full:
        assert_image(change.before, image(statement["before"], set()), where)
    elif statement["op"] == "u":
        assert change.before is None, where
    else:
        assert_image(change.before, key_only(statement["before"]), where)
    assert change.old_key == ({"id": statement["id"]} if statement["op"] == "key_change" else None)


def assert_image(actual: Any, expected: dict[str, Any], where: str) -> None:
    assert actual is not None and actual.keys() == expected.keys(), where
    for column, value in expected.items():
        got = actual[column]
        ok = got is UNKNOWN if value is UNKNOWN else same(got, value)
        assert ok, f"{where}.{column}: {got!r:.80} vs {value!r:.80}"


def test_unchanged_toast_under_full_is_filled_from_the_old_row(legacy_db_any: str) -> None:
    """PostgreSQL sends 'u' in the new tuple even under FULL; the decoder takes the value from the old row."""
    dsn = legacy_db_any
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE toasty (id int PRIMARY KEY, note text, big text);"
                     "ALTER TABLE toasty ALTER COLUMN big SET STORAGE EXTERNAL;"
                     "ALTER TABLE toasty REPLICA IDENTITY FULL")
        slot, publication = open_slot(dsn, "toasty")
        conn.execute("INSERT INTO toasty VALUES (1, 'a', repeat('x', 5000))")
        conn.execute("UPDATE toasty SET note = 'b'")
    raw = [parse_message(data) for _, _, data in peek(dsn, slot, publication)]
    (update,) = [m for m in raw if isinstance(m, Update)]
    assert update.old_kind == "O" and update.new[2] is UNKNOWN and update.old is not None and len(update.old[2]) == 5000
    changed = decode(dsn, slot, publication)[1].changes[0]
    assert changed.after == {"id": 1, "note": "b", "big": "x" * 5000} and changed.before["note"] == "a"


# --- positions ---------------------------------------------------------------------------------------


def test_positions_of_multi_row_inserts_copy_truncate_and_messages(legacy_db_any: str) -> None:
    dsn = legacy_db_any
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE p1 (id int PRIMARY KEY, v text); CREATE TABLE p2 (id int PRIMARY KEY)")
        slot, publication = open_slot(dsn, "p1, p2")
        xids = []
        with conn.transaction():
            xids.append(conn.execute("SELECT txid_current()").fetchone()[0])
            conn.execute("INSERT INTO p1 VALUES (1, 'a'), (2, 'b'), (3, 'c')")  # one WAL record per row
        with conn.transaction():
            xids.append(conn.execute("SELECT txid_current()").fetchone()[0])
            with conn.cursor().copy("COPY p1 FROM STDIN") as copy:  # one WAL record for all rows
                for row in ((4, "d"), (5, "e"), (6, "f")):
                    copy.write_row(row)
        conn.execute("SELECT pg_logical_emit_message(false, 'loose', 'x')")
        with conn.transaction():
            xids.append(conn.execute("SELECT txid_current()").fetchone()[0])
            conn.execute("SELECT pg_logical_emit_message(true, 'outbox', 'hello')")
            conn.execute("INSERT INTO p2 VALUES (1)")
            conn.execute("TRUNCATE p1, p2")
    multi, copied, loose, messaged = decode(dsn, slot, publication)
    # Versions 2 and 3 only add streamed and two-phase transactions, which the bridge does not ask for.
    assert peek(dsn, slot, publication, version=3) == peek(dsn, slot, publication, version=1)
    assert [multi.xid, copied.xid, messaged.xid] == xids and loose.xid is None
    assert multi.commit_lsn < copied.commit_lsn < loose.commit_lsn < messaged.commit_lsn
    assert [c.position.seq for c in multi.changes] == [0, 0, 0]
    assert len({c.position.change_lsn for c in multi.changes}) == 3
    assert [c.position.seq for c in copied.changes] == [0, 1, 2]
    assert len({c.position.change_lsn for c in copied.changes}) == 1
    # A logical message is reported at the end of its WAL record: the LSN of the change after it.
    assert [(c.op, c.position.seq) for c in messaged.changes] == [(Op.MESSAGE, 0), (Op.CREATE, 1), (Op.TRUNCATE, 0),
                                                                  (Op.TRUNCATE, 1)]
    positions = [c.position for c in messaged.changes]
    assert positions[0].change_lsn == positions[1].change_lsn < positions[2].change_lsn == positions[3].change_lsn
    for tx in (multi, copied, messaged):
        assert all(c.position.change_lsn < tx.commit_lsn == c.position.commit_lsn for c in tx.changes)
        assert tx.commit_time.tzinfo is UTC and abs((datetime.now(UTC) - tx.commit_time).total_seconds()) < 60


# --- the legacy app's traffic -------------------------------------------------------------------------

TABLES = ("customers", "customer_addresses", "menu_items", "orders", "order_items")


def test_simulated_legacy_traffic_folds_into_the_legacy_rows(legacy_db_any: str) -> None:
    dsn = legacy_db_any
    slot, publication = open_slot(dsn, ", ".join(TABLES))
    report = run_simulation(dsn, seed=11, count=400)
    transactions = decode(dsn, slot, publication)
    assert [tx.xid for tx in transactions] == [tx.xid for tx in report.transactions]
    for tx, record in zip(transactions, report.transactions, strict=True):
        assert Counter((c.table, c.op.value) for c in tx.changes) == record.changes
    state: dict[str, dict[Any, dict[str, Any]]] = defaultdict(dict)
    unknown_seen = 0
    for change in (c for tx in transactions for c in tx.changes):
        rows, key = state[change.table], change.key["id"]
        if change.op is Op.DELETE:
            del rows[key]
            continue
        previous = rows.get(change.old_key["id"] if change.old_key else key, {})
        unknown_seen += sum(v is UNKNOWN for v in change.after.values())
        rows[key] = {c: previous[c] if v is UNKNOWN else v for c, v in change.after.items()}
    assert unknown_seen > 0, "menu_items.description (STORAGE EXTERNAL) should arrive as unchanged TOAST"
    with psycopg.connect(dsn, options="-c TimeZone=UTC", row_factory=psycopg.rows.dict_row) as conn:
        for table in TABLES:
            held = {row["id"]: row for row in conn.execute(f"SELECT * FROM {table}")}
            assert held.keys() == state[table].keys(), table
            for key, row in held.items():
                for column, value in row.items():
                    assert same(state[table][key][column], value), f"{table} {key} {column}"


# --- the same database through live Debezium ---------------------------------------------------------


def test_the_same_changes_through_live_debezium_are_equal_row_changes(stack: StackInfo,
                                                                      debezium_capture: DebeziumCapture) -> None:
    """Positions, commit times, xids and values: equal RowChanges, so equal event ids, from either source."""
    dsn = debezium_capture.dsn
    slot, publication = open_slot(dsn, ", ".join(TABLES))
    report = run_simulation(dsn, seed=5, count=200)
    xids = {tx.xid for tx in report.transactions}
    row_count = sum(report.row_changes.values())
    topics = [debezium_capture.transaction_topic, *(debezium_capture.table_topic(t) for t in TABLES)]

    def complete(records: list[Any]) -> bool:
        ends = {int(p["id"].split(":")[0]) for r in records if r.topic == topics[0] and (p := payload(r))
                and p["status"] == "END"}
        return ends >= xids and sum(r.value is not None and r.topic != topics[0] for r in records) >= row_count

    records = wait_for(stack.bootstrap_servers, topics, complete, what=f"{len(xids)} transactions from Debezium")
    assembler, theirs = TransactionAssembler(), {}
    for r in sorted(records, key=lambda r: (r.topic != topics[0], r.topic, r.offset)):
        record = decode_record(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers or ()))
        if isinstance(record, (ChangeRecord, TransactionMarker)):
            theirs.update({d.transaction.xid: d.transaction for d in assembler.add(((r.topic, r.partition), r.offset),
                                                                                   record, 0)})
    mine = decode(dsn, slot, publication)
    assert [tx.xid for tx in mine] == [tx.xid for tx in report.transactions]
    for tx in mine:
        other = theirs[tx.xid]
        assert (tx.commit_lsn, len(tx.changes)) == (other.commit_lsn, len(other.changes))
        assert tx.commit_time.replace(microsecond=tx.commit_time.microsecond // 1000 * 1000) == other.commit_time
        for a, b in zip(tx.changes, other.changes, strict=True):
            assert a == b, f"xid {tx.xid}: pgoutput {a}\n!= debezium {b}"
