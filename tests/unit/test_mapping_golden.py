"""The golden-case runner and the `cdc-bridge mappings validate|test` commands."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.changes import UNKNOWN
from bridge.errors import MappingError
from bridge.mapping.commands import mappings_group
from bridge.mapping.golden import discover_case_files, load_case_file, run_golden

MAPPING = """\
namespace: shop
tables:
  items: {key: [id], columns: {id: integer, price: "numeric(10,2)", note: text, seen_at: timestamptz}}
rules:
  - id: items.priced
    table: items
    ops: [c]
    emit:
      - event: ItemPriced
        aggregate: {type: item, id: after.id}
        data: {price: after.price, note: {value: after.note, optional: true}}
  - id: items.strict
    table: items
    ops: [u]
    on_error: stop
    emit: [{event: Touched, aggregate: {type: item, id: after.id}, data: {note: after.note}}]
"""


def project(tmp_path: Path, cases: str, mapping: str = MAPPING) -> Path:
    (tmp_path / "shop.yaml").write_text(mapping)
    (tmp_path / "shop.tests").mkdir(exist_ok=True)
    case_file = tmp_path / "shop.tests" / "items.yaml"
    case_file.write_text(textwrap.dedent(cases))
    return case_file


def test_a_passing_case_and_the_values_it_decodes(tmp_path: Path) -> None:
    case_file = project(tmp_path, """\
    cases:
      - name: priced
        change: {op: c, table: items, after: {id: 1, price: "2.50", note: !unknown , seen_at: 2024-01-01T10:00:00Z}}
        expect:
          events: [{type: shop.item.ItemPriced.v1, subject: item/1, data: {price: "2.50"}}]
    """)
    [case] = load_case_file(case_file)
    change = case.transactions[0].changes[0]
    assert change.after == {"id": 1, "price": Decimal("2.50"), "note": UNKNOWN,
                            "seen_at": datetime(2024, 1, 1, 10, tzinfo=timezone.utc)}
    assert change.key == {"id": 1} and change.position.change_lsn == 1000
    [outcome] = run_golden([case_file])
    assert outcome.passed, outcome.report


def test_a_failing_case_shows_a_readable_diff(tmp_path: Path) -> None:
    case_file = project(tmp_path, """\
    cases:
      - name: wrong price, missing event
        change: {op: c, table: items, after: {id: 1, price: "2.50", note: n, seen_at: 2024-01-01T10:00:00Z}}
        expect:
          events:
            - {type: shop.item.ItemPriced.v1, data: {price: "2.05", note: n}}
            - {type: shop.item.ItemPriced.v1, subject: item/2}
    """)
    [outcome] = run_golden([case_file])
    assert not outcome.passed
    assert outcome.report.splitlines() == [
        "--- expected", "+++ actual", "@@ -1,8 +1,6 @@", " events:",
        " - type: shop.item.ItemPriced.v1", "   data:", "-    price: '2.05'", "+    price: '2.50'",
        "     note: n", "-- type: shop.item.ItemPriced.v1", "-  subject: item/2", " dead_letters: []"]


def test_dead_letters_errors_and_counts_are_expectations_too(tmp_path: Path) -> None:
    case_file = project(tmp_path, """\
    cases:
      - name: stop policy raises
        prior_rows: []
        transactions:
          - changes: [{op: c, table: items, after: {id: 1, price: "1.00", note: !unknown , seen_at: null}}]
          - changes: [{op: u, table: items, after: {id: 1, price: "1.00", note: !unknown , seen_at: null}}]
        expect:
          events: [{type: shop.item.ItemPriced.v1, data: {price: "1.00"}}]
          error: "rule 'items.strict', field 'emit[0].data.note': after.note is unknown"
      - name: counts are compared when given
        change: {op: d, table: items, before: {id: 1}}
        expect:
          events: []
          unmatched: {items: 2}
    """)
    first, second = run_golden([case_file])
    assert first.passed, first.report
    assert not second.passed and "-  items: 2\n+  items: 1" in second.report


def test_case_file_problems_are_located(tmp_path: Path) -> None:
    case_file = project(tmp_path, "cases:\n  - name: x\n    change: {op: c, table: items}\n    expect: {}\n"
                                  "    expct: {}\n")
    with pytest.raises(MappingError, match=r"items.yaml:5: field 'cases\[0\].expct': unknown field 'expct' \(expected "
                                           r"one of name, description, prior_rows, change, transaction, transactions, "
                                           r"expect\)"):
        load_case_file(case_file)
    case_file.write_text("cases:\n  - name: x\n    change: {op: c, table: items, after: {id: 1, price: abc}}\n"
                         "    expect: {}\n")
    with pytest.raises(MappingError, match=r"items.yaml:2: field 'cases\[0\]': case 'x': column price: 'abc' is not "
                                           r"a numeric\(10,2\) value"):
        load_case_file(case_file)


def test_cases_are_found_from_mappings_folders_and_files(tmp_path: Path) -> None:
    case_file = project(tmp_path, "cases: [{name: x, change: {op: t, table: items}, expect: {}}]\n")
    for path in (tmp_path, tmp_path / "shop.yaml", tmp_path / "shop.tests", case_file):
        assert discover_case_files([path]) == [case_file], path


def test_validate_command(tmp_path: Path) -> None:
    project(tmp_path, "cases: [{name: x, change: {op: t, table: items}, expect: {}}]\n")
    done = CliRunner().invoke(mappings_group, ["validate", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == [
        f"{tmp_path}/shop.yaml: ok: 2 rules (0 ignore), 1 tables (items), 2 event types",
        f"  no contracts folder next to it ({tmp_path}/contracts): its events are published unchecked (see the "
        "README's Contracts section)"]
    (tmp_path / "broken.yaml").write_text(MAPPING.replace("id: after.id}", "id: aftr.id}", 1))
    done = CliRunner().invoke(mappings_group, ["validate", str(tmp_path)])
    assert done.exit_code == 2
    assert f"{tmp_path}/broken.yaml:10: rule 'items.priced', field 'emit[0].aggregate.id': unknown name 'aftr'" in \
        done.output


def test_test_command_exit_codes(tmp_path: Path) -> None:
    case_file = project(tmp_path, """\
    cases:
      - {name: truncate, change: {op: t, table: items}, expect: {events: [], unmatched: {items: 1}}}
    """)
    done = CliRunner().invoke(mappings_group, ["test", str(tmp_path)])
    assert (done.exit_code, done.output.splitlines()[-1]) == (0, "1 passed, 0 failed"), done.output
    case_file.write_text(case_file.read_text().replace("items: 1", "items: 3"))
    done = CliRunner().invoke(mappings_group, ["test", str(tmp_path)])
    assert done.exit_code == 1 and "FAIL " in done.output and "-  items: 3" in done.output
    case_file.write_text("cases: 3\n")
    assert CliRunner().invoke(mappings_group, ["test", str(tmp_path)]).exit_code == 2


def test_the_console_script_has_the_mappings_commands() -> None:
    done = subprocess.run([sys.executable, "-m", "bridge.cli", "mappings", "validate", "mappings/restaurant.yaml"],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mappings/restaurant.yaml: ok: 29 rules")
