"""`cdc-bridge tail`: readable lines, --json, start positions, filters, following, Ctrl-C, a missing log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.sinks.locallog_reader import LogNotFound
from bridge.tail import tail_command
from tests.unit.test_locallog import REPO, make_event, publish_all

EVENTS = [
    make_event(0, aggregate_type="customer", name="CustomerSignedUp", data={"customerId": 7, "name": "Ada Lovelace"}),
    make_event(1, aggregate_type="order", name="OrderOpened", aggregate_id="42", data={"orderId": 42}),
    make_event(2, aggregate_type="order", name="OrderPlaced", aggregate_id="42",
               data={"orderId": 42, "total": "18.90", "lines": [{"menuItemId": i, "quantity": 2} for i in range(9)],
                     "note": None, "express": True}),
    make_event(3, aggregate_type="menu_item", name="MenuItemPriceChanged", aggregate_id="5",
               data={"menuItemId": 5, "oldPrice": "7.10", "newPrice": "7.50"}),
    make_event(4, aggregate_type="order", name="OrderPlaced", aggregate_id="43", data={"orderId": 43}),
]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    publish_all(tmp_path, EVENTS)
    return tmp_path


def tail(log_dir: Path, *args: str) -> list[str]:
    result = CliRunner().invoke(tail_command, ["--log", str(log_dir), "--no-follow", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output.splitlines()


def test_one_readable_line_per_event(log_dir: Path) -> None:
    lines = tail(log_dir, "--from-start")
    assert len(lines) == len(EVENTS)
    assert lines[0].split() == ["0", "2026-03-01", "12:00:00.000", "CustomerSignedUp.v1", "customer/0",
                                "customerId=7", 'name="Ada', 'Lovelace"']
    placed = lines[2]
    assert placed.startswith("      2  2026-03-01 12:00:02.000  OrderPlaced.v1  order/42  orderId=42 total=18.90 lines=[")
    assert "…" in placed and len(placed) < 200, "a long nested value is cut short"
    assert placed.endswith("note=null express=true")
    assert lines[3].endswith("MenuItemPriceChanged.v1  menu_item/5  menuItemId=5 oldPrice=7.10 newPrice=7.50")


def test_json_lines_carry_the_envelope_and_the_data(log_dir: Path) -> None:
    rows = [json.loads(line) for line in tail(log_dir, "--from-start", "--json")]
    assert [row["offset"] for row in rows] == [0, 1, 2, 3, 4]
    for row, event in zip(rows, EVENTS):
        assert row == {"offset": row["offset"], "id": event.id, "type": event.type, "subject": event.subject,
                       "time": event.headers()[5][1].decode(), "sequence": event.sequence, "data": dict(event.data)}


def test_start_positions(log_dir: Path) -> None:
    def offsets(*args: str) -> list[int]:
        return [json.loads(line)["offset"] for line in tail(log_dir, "--json", *args)]

    assert offsets() == [0, 1, 2, 3, 4], "default: the last 10"
    assert offsets("--last", "2") == [3, 4]
    assert offsets("--last", "0") == []
    assert offsets("--offset", "3") == [3, 4]
    assert offsets("--offset", "99") == []
    assert offsets("--last", "2", "--type", "Order*") == [2, 4], "the last N matching events"


def test_filters_by_type_glob_and_aggregate(log_dir: Path) -> None:
    def ids(*args: str) -> list[int]:
        return [json.loads(line)["offset"] for line in tail(log_dir, "--from-start", "--json", *args)]

    assert ids("--type", "OrderPlaced") == [2, 4]
    assert ids("--type", "OrderPlaced.v1") == [2, 4]
    assert ids("--type", "shop.order.*") == [1, 2, 4]
    assert ids("--type", "*.menu_item.*", "--type", "Customer*") == [0, 3]
    assert ids("--type", "OrderPlaced.v2") == []
    assert ids("--aggregate", "order") == [1, 2, 4]
    assert ids("--aggregate", "order/42") == [1, 2]
    assert ids("--aggregate", "order/42", "--aggregate", "menu_item") == [1, 2, 3]
    assert ids("--aggregate", "order", "--type", "OrderOpened") == [1]


def test_conflicting_start_options_are_a_usage_error(log_dir: Path) -> None:
    result = CliRunner().invoke(tail_command, ["--log", str(log_dir), "--from-start", "--last", "3"])
    assert result.exit_code == 2
    assert "--from-start and --last exclude each other" in result.output


def test_a_missing_log_directory_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(tail_command, ["--log", str(tmp_path / "nowhere"), "--no-follow"])
    assert isinstance(result.exception, LogNotFound)
    assert f"no event log at {tmp_path / 'nowhere'}: the directory does not exist" in str(result.exception)


def test_dead_letters_are_readable_too(tmp_path: Path) -> None:
    from bridge.sinks.locallog import LocalLogEventSink

    with LocalLogEventSink(tmp_path) as sink:
        sink.publish_dead_letter({"kind": "translation_failed", "rule": "orders.placed", "error": "total is unknown",
                                  "change": {"table": "public.orders", "op": "u", "position": "0/10/0/20#0"}},
                                 b"public.orders", lambda error: None)
        sink.flush(10)
    (line,) = tail(tmp_path, "--dead-letters", "--from-start")
    assert line.split(None, 1)[1] == ('dead letter (translation_failed)  rule=orders.placed table=public.orders op=u '
                                      'position=0/10/0/20#0 error="total is unknown"')


FOLLOW = "import sys; from bridge.tail import tail_command; tail_command(sys.argv[1:], prog_name='tail')"


def test_follows_new_events_and_stops_cleanly_on_ctrl_c(log_dir: Path) -> None:
    follower = subprocess.Popen([sys.executable, "-c", FOLLOW, "--log", str(log_dir), "--last", "1", "--json"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["offset"] == 4
        more = [make_event(i) for i in range(5, 8)]
        publish_all(log_dir, more)
        lines = [json.loads(follower.stdout.readline()) for _ in more]
        assert [line["id"] for line in lines] == [e.id for e in more]
        time.sleep(0.3)
        follower.send_signal(signal.SIGINT)
        _, errors = follower.communicate(timeout=10)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, errors
    assert "Traceback" not in errors


def test_a_closed_pipe_ends_it_quietly(log_dir: Path) -> None:
    publish_all(log_dir, [make_event(i) for i in range(5, 3000)])
    reader, writer = os.pipe()
    tail_process = subprocess.Popen([sys.executable, "-c", FOLLOW, "--log", str(log_dir), "--from-start",
                                     "--no-follow"], cwd=REPO, stdout=writer, stderr=subprocess.PIPE, text=True)
    os.close(writer)
    os.read(reader, 100)
    os.close(reader)
    _, errors = tail_process.communicate(timeout=30)
    assert tail_process.returncode == 0 and errors == ""


def _damage_the_middle(log_dir: Path) -> Path:
    """Overwrite 4 bytes in the middle of the active segment, as a disk or a careless hand would."""
    from bridge.eventlog import EVENTS as EVENTS_DIR, list_segments

    segment = list_segments(log_dir / EVENTS_DIR)[-1][1]
    with open(segment, "r+b") as file:
        file.seek(segment.stat().st_size // 2)
        file.write(b"\xde\xad\xbe\xef")
    return segment


def _cdc_bridge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def damaged_log(tmp_path: Path) -> tuple[Path, Path]:
    publish_all(tmp_path, [make_event(i) for i in range(400)], fsync_interval_ms=0)
    return tmp_path, _damage_the_middle(tmp_path)


def test_a_damaged_log_is_reported_not_printed_in_half(damaged_log: tuple[Path, Path]) -> None:
    from bridge.eventlog import CorruptLogError

    log_dir, segment = damaged_log
    result = CliRunner().invoke(tail_command, ["--log", str(log_dir), "--no-follow", "--from-start", "--json"])
    assert isinstance(result.exception, CorruptLogError)
    printed = [json.loads(line)["offset"] for line in result.output.splitlines()]
    assert printed == list(range(len(printed))) and 0 < len(printed) < 400, "what precedes the damage, then the error"
    assert str(segment) in str(result.exception) and f"offset {len(printed)}" in str(result.exception)


@pytest.mark.parametrize("start", [["--from-start", "--no-follow"], ["--from-start"], ["--last", "5", "--no-follow"],
                                   ["--last", "5"], ["--offset", "3"]],
                         ids=["from-start", "from-start-following", "last", "last-following", "offset-following"])
def test_the_command_exits_2_naming_the_damage_and_log_verify(damaged_log: tuple[Path, Path], start: list[str]) -> None:
    log_dir, segment = damaged_log
    done = _cdc_bridge("tail", "--log", str(log_dir), *start, timeout=120)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("cdc-bridge: event log damaged: ") and str(segment) in line
    assert "byte " in line and "offset " in line and f"cdc-bridge log verify --log {log_dir}" in line
    assert "Traceback" not in done.stderr
