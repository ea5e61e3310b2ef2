"""Loading mapping files: every problem is one line naming file, line, rule and field, and what was expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bridge.errors import MappingError
from bridge.mapping.loader import (
    check_files,
    declared_types_of,
    load_mappings,
    needs_before,
    read_yaml,
    replica_identity_problems,
)
from bridge.mapping.spec import canonical_pg_type

ORDERS = """\
namespace: restaurant
tables:
  orders:
    key: [id]
    columns: {id: bigint, customer_id: bigint, status: varchar(20), updated_on: timestamp}
  order_items:
    columns: {id: bigint, order_id: bigint, quantity: integer}
rules:
"""


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str, **kwargs) -> list[str]:
    [report] = check_files([write(tmp_path, text)], **kwargs)
    return report.problems


def one_problem(tmp_path: Path, text: str, **kwargs) -> str:
    found = problems(tmp_path, text, **kwargs)
    assert len(found) == 1, found
    return found[0].split(": ", 1)[1] if found[0].count(":") else found[0]


def test_an_unknown_name_names_file_line_rule_field_and_what_was_expected(tmp_path: Path) -> None:
    path = write(tmp_path, ORDERS + """\
      - id: orders.placed
        table: orders
        ops: [u]
        when: before.status != 'PLACED' and after.status == 'PLACED'
        emit:
          - event: OrderPlaced
            aggregate: {type: order, id: aftr.id}
            data: {orderId: after.id}
    """)
    with pytest.raises(MappingError) as caught:
        load_mappings([path])
    assert str(caught.value) == (
        f"{path}:15: rule 'orders.placed', field 'emit[0].aggregate.id': unknown name 'aftr' "
        "(expected one of before, after, changed, key, op, tx); did you mean 'after'?")


@pytest.mark.parametrize("rule, expected", [
    ("{id: a.b, table: orders, ops: [c], ignore: true, emitt: []}",
     (":9: rule 'a.b', field 'emitt': unknown field 'emitt' (expected one of id, description, table, ops, when, let, "
     "ignore, emit, on_error)")),
    ("{id: a.b, table: orders, ignore: true}", ":9: rule 'a.b', field 'ops': missing required field 'ops'"),
    ("{id: a.b, table: orders, ops: [x], ignore: true}",
     ":9: rule 'a.b', field 'ops[0]': Input should be 'r', 'c', 'u', 'd' or 't' (got 'x')"),
    ("{id: a.b, table: orders, ops: c, ignore: true, on_error: retry}",
     ":9: rule 'a.b', field 'on_error': Input should be 'dead_letter' or 'stop' (got 'retry')"),
    ("{id: a.b, table: orders, ops: [c]}",
     ":9: rule 'a.b': a rule needs either 'emit' (a list of events) or 'ignore: true', not both or neither"),
    ("{id: Bad Id, table: orders, ops: [c], ignore: true}",
     ":9: rule 'Bad Id', field 'id': 'Bad Id' is not valid: expected a lowercase id like 'orders.placed'"),
    ("{id: a.b, table: orders, ops: [c], emit: [{event: orderPlaced, aggregate: {type: order, id: key.id}}]}",
     ":9: rule 'a.b', field 'emit[0].event': 'orderPlaced' is not valid: expected an event name in CamelCase"),
    ("{id: a.b, table: orders, ops: [c], emit: [{event: E, aggregate: {type: order}}]}",
     ":9: rule 'a.b', field 'emit[0].aggregate.id': missing required field 'id'"),
    (("{id: a.b, table: orders, ops: [c], emit: [{event: E, aggregate: {type: o, id: key.id}, data: {x: {value: "
     "key.id, const: 1}}}]}"),
     (":9: rule 'a.b', field 'emit[0].data.x': a field needs exactly one of 'value' (an expression), 'const', "
     "'collect' or 'fields' (an object), got value and const")),
    (("{id: a.b, table: orders, ops: [c], emit: [{event: E, aggregate: {type: o, id: key.id}, data: {x: {vaule: "
     "key.id}}}]}"),
     (":9: rule 'a.b', field 'emit[0].data.x.vaule': unknown field 'vaule' (expected one of value, const, collect, "
     "fields, optional, when)")),
    ("{id: a.b, table: orders, on: [c], ignore: true}",
     "field 'True': True is not a field name; YAML reads a bare 'on' as true: the operations go under 'ops'"),
])
def test_shape_errors_are_located_and_say_what_was_expected(tmp_path: Path, rule: str, expected: str) -> None:
    found = problems(tmp_path, ORDERS + f"  - {rule}\n")
    assert any(expected in p for p in found), found


def test_top_level_errors(tmp_path: Path) -> None:
    assert problems(tmp_path, "rules: []\n") == [
        f"{tmp_path}/m.yaml:1: field 'namespace': missing required field 'namespace'",
        f"{tmp_path}/m.yaml:1: field 'rules': List should have at least 1 item after validation, not 0 (got [])"]
    assert problems(tmp_path, "namespace: x\nsurprise: 1\nrules: [{id: a, table: t, ops: c, ignore: true}]\n") == [
        (f"{tmp_path}/m.yaml:2: field 'surprise': unknown field 'surprise' (expected one of version, namespace, "
        "schema, on_error, description, tables, rules)")]


def test_yaml_problems_have_lines(tmp_path: Path) -> None:
    assert problems(tmp_path, "namespace: x\nrules: [\n") [0].startswith(f"{tmp_path}/m.yaml:3: invalid YAML")
    assert problems(tmp_path, "namespace: x\nnamespace: y\n") == [
        f"{tmp_path}/m.yaml:2: duplicate key 'namespace' (first on line 1)"]
    assert "only allowed in golden test cases" in problems(tmp_path, "namespace: !unknown\n")[0]
    assert "could not determine a constructor" in problems(tmp_path, "namespace: !!python/name:os.system\n")[0]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdef", "bcdefg"))
    assert "too large or too deeply nested" in problems(tmp_path, bomb)[0]


def test_merge_keys_may_override_but_written_keys_may_not_repeat(tmp_path: Path) -> None:
    doc = read_yaml(write(tmp_path, "base: &b {x: 1, y: 2}\nc: {<<: *b, y: 3}\n"))
    assert doc.data["c"] == {"x": 1, "y": 3} and doc.line_of(["c", "y"]) == 2


@pytest.mark.parametrize("rule, expected", [
    ("{id: a.b, table: ordres, ops: [c], ignore: true}",
     "rule 'a.b', field 'table': unknown table 'ordres' (declared tables: order_items, orders)"),
    ("{id: a.b, table: orders, ops: [u], when: after.stauts == 'X', ignore: true}",
     ("rule 'a.b', field 'when': unknown column 'stauts' of orders in after.stauts (expected one of customer_id, id, "
     "status, updated_on); did you mean 'status'?")),
    ("{id: a.b, table: orders, ops: [d], when: key.order_id == 1, ignore: true}",
     "unknown key column 'order_id' of orders in key.order_id (expected one of id)"),
    ("{id: a.b, table: orders, ops: [c], when: len(tx.order_lines) > 0, ignore: true}",
     "unknown table 'order_lines' in tx.order_lines (expected one of order_items, orders)"),
    (("{id: a.b, table: orders, ops: [c], when: after.status, ignore: true, let: {n: {collect: {table: order_items, "
     "where: row.order == after.id, value: row.id}}}}"),
     "field 'let.n.collect.where': unknown column 'order' of order_items in row.order"),
    (("{id: a.b, table: orders, ops: [c], emit: [{event: E, each: lines, aggregate: {type: o, id: item.nope}}], "
     "let: {lines: {collect: {table: order_items, fields: {lineId: row.id}}}}}"),
     "field 'emit[0].aggregate.id': unknown field 'nope' of each item in item.nope (expected one of lineId)"),
    ("{id: a.b, table: orders, ops: [c], when: row.id == 1, ignore: true}",
     "field 'when': unknown name 'row'"),
    ("{id: a.b, table: orders, ops: [c], ignore: true, let: {after: 1}}",
     "field 'let.after': let name 'after' hides a built-in name or function; choose another"),
    ("{id: a.b, table: orders, ops: [c], ignore: true, let: {n: {value: key.id, optional: true}}}",
     "field 'let.n': let entries take no 'optional' or 'when'"),
    (("{id: a.b, table: orders, ops: [c], ignore: true, let: {n: {collect: {table: order_items, fields: {x: {collect: "
     "{table: orders, value: row.id}}}}}}}"),
     "field 'let.n.collect.fields.x.collect': a collect cannot be nested inside another collect"),
])
def test_names_tables_and_columns_are_checked_against_the_declared_tables(tmp_path: Path, rule: str,
                                                                          expected: str) -> None:
    found = problems(tmp_path, ORDERS + f"  - {rule}\n")
    assert len(found) == 1 and expected in found[0] and f"{tmp_path}/m.yaml:9: " in found[0], found


def test_rule_ids_are_unique_across_files(tmp_path: Path) -> None:
    rule = "  - {id: orders.x, table: orders, ops: [c], ignore: true}\n"
    first, second = write(tmp_path, ORDERS + rule, "a.yaml"), write(tmp_path, ORDERS + rule, "b.yaml")
    reports = check_files([first, second])
    assert reports[0].ok
    assert reports[1].problems == [(f"{second}:9: rule 'orders.x', field 'id': rule id 'orders.x' is already used at "
                                   f"{first}:9; rule ids are part of event ids and must be unique")]


def test_an_emitting_rule_under_an_unconditional_ignore_rule_is_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, ORDERS + """\
      - {id: orders.quiet, table: orders, ops: [u, d], ignore: true}
      - id: orders.loud
        table: orders
        ops: [u]
        emit: [{event: OrderChanged, aggregate: {type: order, id: after.id}}]
    """)
    assert found == [(f"{tmp_path}/m.yaml:10: rule 'orders.loud': can never emit for op u: ignore rule 'orders.quiet' "
                     f"({tmp_path}/m.yaml:9) silences public.orders op u unconditionally (ignore rules are tried first)")]


def test_declared_types_are_canonical_and_checked(tmp_path: Path) -> None:
    mappings = load_mappings([write(tmp_path, ORDERS + "  - {id: a.b, table: orders, ops: [c], ignore: true}\n")])
    assert mappings.declared_types()["orders"] == {"id": "bigint", "customer_id": "bigint",
                                                   "status": "character varying(20)",
                                                   "updated_on": "timestamp without time zone"}
    assert mappings.keys == {"orders": ("id",), "order_items": ("id",)}  # key defaults to id
    bad = ORDERS.replace("quantity: integer", "quantity: nteger") + "  - {id: a.b, table: orders, ops: [c], ignore: true}\n"
    assert problems(tmp_path, bad) == [
        (f"{tmp_path}/m.yaml:7: field 'tables.order_items.columns.quantity': unknown PostgreSQL type 'nteger' (expected "
        "a type such as bigint, integer, numeric(10,2), varchar(255), char(2), text, text[], boolean, jsonb, "
        "timestamptz, timestamp, date, uuid; declare enums and domains as text)")]


@pytest.mark.parametrize("declared, canonical", [
    ("varchar(255)", "character varying(255)"), ("NUMERIC(10, 2)", "numeric(10,2)"), ("numeric(8)", "numeric(8,0)"),
    ("timestamptz", "timestamp with time zone"), ("TIMESTAMP", "timestamp without time zone"),
    ("timestamp(3) with time zone", "timestamp(3) with time zone"), ("text[]", "text[]"), ("int4[]", "integer[]"),
    ("char", "character(1)"), ("bool", "boolean"), ("double precision", "double precision"), ("jsonb", "jsonb"),
])
def test_canonical_pg_types(declared: str, canonical: str) -> None:
    assert canonical_pg_type(declared) == canonical


def test_the_known_schema_catches_tables_columns_and_types_the_database_does_not_have(tmp_path: Path) -> None:
    known = {"public.orders": {"id": "bigint", "customer_id": "int8", "status": "text", "updated_on": "timestamp"}}
    found = problems(tmp_path, ORDERS + "  - {id: a.b, table: orders, ops: [c], ignore: true}\n", known_schema=known)
    assert found == [
        (f"{tmp_path}/m.yaml:5: field 'tables.orders.columns.status': declared as character varying(20), but the "
        "database has text"),
        f"{tmp_path}/m.yaml:6: field 'tables.order_items': unknown table 'order_items' (the database has orders)"]
    # Without declared tables, rules are checked against the known schema directly.
    bare = "namespace: x\nrules:\n  - {id: a.b, table: orders, ops: [u], when: after.total > 0, ignore: true}\n"
    assert "unknown column 'total' of orders in after.total (expected one of customer_id, id, status, updated_on)" in \
        one_problem(tmp_path, bare, known_schema=known)


def test_which_rules_need_old_rows(tmp_path: Path) -> None:
    mappings = load_mappings([write(tmp_path, ORDERS + """\
      - {id: orders.touched, table: orders, ops: [u], when: "changed == {'updated_on'}", ignore: true}
      - {id: orders.created, table: orders, ops: [c], when: before is None, ignore: true}
      - id: order_items.removed
        table: order_items
        ops: [d]
        emit: [{event: ItemRemoved, aggregate: {type: order, id: before.order_id}}]
      - id: order_items.gone
        table: order_items
        ops: [d]
        emit: [{event: ItemGone, aggregate: {type: order, id: key.id}}]
    """)])
    assert needs_before(mappings) == {"orders": ("orders.touched",), "order_items": ("order_items.removed",)}
    assert replica_identity_problems(mappings, full_tables=["public.orders"], prior_store=False) == [
        ("public.order_items: rules 'order_items.removed' read old values (before/changed), but the table's REPLICA "
        "IDENTITY is not FULL and no prior-row store is configured; run ALTER TABLE public.order_items REPLICA "
        "IDENTITY FULL, or enable the prior-row store")]
    assert replica_identity_problems(mappings, full_tables=[], prior_store=True) == []


def test_load_reports_the_first_problem_and_how_many_more(tmp_path: Path) -> None:
    path = write(tmp_path, ORDERS + "  - {id: a.b, table: x, ops: [c], when: y, ignore: true}\n")
    with pytest.raises(MappingError, match=r"m.yaml:9: rule 'a.b', field 'table': unknown table 'x' .*\(and 1 more; "
                                           r"run `cdc-bridge mappings validate`\)"):
        load_mappings([path])
    with pytest.raises(MappingError, match="no such mapping file or directory"):
        load_mappings([tmp_path / "missing.yaml"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MappingError, match="no mapping files"):
        load_mappings([tmp_path / "empty"])


def test_a_directory_loads_every_mapping_file_and_tables_must_agree(tmp_path: Path) -> None:
    write(tmp_path, ORDERS + "  - {id: a.one, table: orders, ops: [c], ignore: true}\n", "a.yaml")
    write(tmp_path, ORDERS + "  - {id: a.two, table: orders, ops: [d], ignore: true}\n", "b.yml")
    (tmp_path / "a.tests").mkdir()  # golden cases live in sub-folders: not mapping files
    assert [r.id for r in load_mappings([tmp_path]).rules] == ["a.one", "a.two"]
    write(tmp_path, ORDERS.replace("quantity: integer", "quantity: bigint") +
          "  - {id: a.three, table: orders, ops: [t], ignore: true}\n", "c.yaml")
    with pytest.raises(MappingError, match="table 'order_items' is declared with other columns or types"):
        load_mappings([tmp_path])


def test_declared_types_of_canonicalises_a_schema() -> None:
    assert declared_types_of({"t": {"a": "INT8", "b": "VARCHAR(3)"}}) == {"t": {"a": "bigint", "b": "character varying(3)"}}
