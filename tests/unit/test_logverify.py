"""`cdc-bridge log verify`: every segment of the events and dead letters checked (header, records, checksums,
contiguous offsets, summaries, names); exit 0 clean, 1 a torn tail only (the next writer cuts it), 2 damage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bridge.eventlog import DEAD_LETTERS, EVENTS, list_segments, segment_name, summary_path
from bridge.logverify import log_group
from bridge.sinks.locallog import LocalLogEventSink
from tests.unit.test_locallog import REPO, Acks, dead_letter, make_event, publish_all
from tests.unit.test_locallog_damage import flipped, frames, overwrite


def verify(*args: str) -> Result:
    return CliRunner().invoke(log_group, ["verify", *args])


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """A log with several sealed segments of events, and a few dead letters."""
    publish_all(tmp_path, [make_event(i) for i in range(300)], segment_bytes=32 * 1024)
    acks = Acks()
    with LocalLogEventSink(tmp_path, segment_bytes=32 * 1024) as sink:
        for i in range(5):
            sink.publish_dead_letter(dead_letter(i), b"public.orders", acks.callback())
        sink.flush(10)
    assert not acks.errors
    assert len(list_segments(tmp_path / EVENTS)) >= 3
    return tmp_path


def segments(log_dir: Path, log: str = EVENTS) -> list[Path]:
    return [path for _, path in list_segments(log_dir / log)]


def test_a_clean_log_passes_with_its_records_per_segment(log_dir: Path) -> None:
    result = verify("--log", str(log_dir))
    assert result.exit_code == 0, result.output
    for path in segments(log_dir):
        count = sum(1 for _ in frames(path))
        assert f"{path.name}  {count} records" in result.output
    assert "events: 300 records in" in result.output and "dead-letters: 5 records in 1 segment" in result.output
    assert result.output.strip().splitlines()[-1].startswith("ok:")


def test_a_torn_tail_is_reported_as_such_with_exit_1(log_dir: Path) -> None:
    active = segments(log_dir)[-1]
    size = active.stat().st_size
    with open(active, "r+b") as file:
        file.truncate(size - 10)
    (last_start, last_size) = frames(active)[-1]
    whole_end = last_start + last_size
    result = verify("--log", str(log_dir))
    assert result.exit_code == 1, result.output
    assert f"torn tail: {size - 10 - whole_end} bytes at byte {whole_end} (offset 299)" in result.output
    assert "the next writer cuts it" in result.output and "damaged" not in result.output


def test_damage_in_the_active_segment_is_reported_with_file_byte_and_offset(log_dir: Path) -> None:
    active = segments(log_dir)[-1]
    base = list_segments(log_dir / EVENTS)[-1][0]
    records = frames(active)
    overwrite(active, records[2][0] + 30, flipped(active, records[2][0] + 30))
    result = verify("--log", str(log_dir))
    assert result.exit_code == 2, result.output
    assert (f"damaged: {active} byte {records[2][0]} (offset {base + 2}): a record whose checksum fails; "
            f"valid records follow from byte {records[3][0]}") in result.output
    assert result.output.strip().splitlines()[-1].startswith("DAMAGED:")


def test_damage_in_a_sealed_segment_with_a_summary_is_found(log_dir: Path) -> None:
    first = segments(log_dir)[0]
    records = frames(first)
    overwrite(first, records[-1][0] + 12, flipped(first, records[-1][0] + 12))  # its last record: not a tail
    result = verify("--log", str(log_dir))
    assert result.exit_code == 2, result.output
    assert f"damaged: {first} byte {records[-1][0]} (offset {len(records) - 1})" in result.output


def test_damaged_dead_letters_are_found(log_dir: Path) -> None:
    (letters,) = segments(log_dir, DEAD_LETTERS)
    records = frames(letters)
    overwrite(letters, records[1][0] + 50, flipped(letters, records[1][0] + 50))
    result = verify("--log", str(log_dir))
    assert result.exit_code == 2, result.output
    assert f"damaged: {letters} byte {records[1][0]} (offset 1)" in result.output


def test_a_summary_that_disagrees_with_its_segment_is_damage(log_dir: Path) -> None:
    first = segments(log_dir)[0]
    stored = json.loads(summary_path(first).read_text())
    summary_path(first).write_text(json.dumps({**stored, "count": stored["count"] + 1}))
    result = verify("--log", str(log_dir))
    assert result.exit_code == 2, result.output
    assert f"damaged: {summary_path(first)}" in result.output and "count" in result.output


def test_a_missing_summary_is_only_a_note(log_dir: Path) -> None:
    summary_path(segments(log_dir)[0]).unlink()
    result = verify("--log", str(log_dir))
    assert result.exit_code == 0, result.output
    assert "no summary (the next writer rebuilds it)" in result.output


def test_a_missing_or_renamed_segment_is_damage(log_dir: Path) -> None:
    second = segments(log_dir)[1]
    second.rename(second.with_name("renamed.log"))
    result = verify("--log", str(log_dir))
    assert result.exit_code == 2, result.output
    assert "should start at offset" in result.output and "renamed.log" in result.output


def test_a_segment_whose_header_names_another_offset_is_damage(log_dir: Path) -> None:
    base, second = list_segments(log_dir / EVENTS)[1]
    second.rename(second.with_name(segment_name(base + 1)))
    result = verify("--log", str(log_dir))
    assert result.exit_code == 2, result.output
    assert f"its header says it starts at offset {base}" in result.output


def test_readable_by_others_is_a_warning(log_dir: Path) -> None:
    os.chmod(segments(log_dir)[0], 0o644)
    result = verify("--log", str(log_dir))
    assert result.exit_code == 0, result.output
    assert f"warning: {segments(log_dir)[0]} is readable by group or others (mode 0644)" in result.output


def test_a_missing_log_is_named(tmp_path: Path) -> None:
    result = verify("--log", str(tmp_path / "nowhere"))
    assert result.exit_code != 0 and "nowhere" in str(result.exception)


def _cdc_bridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_the_command_line_exit_codes(log_dir: Path, tmp_path: Path) -> None:
    clean = _cdc_bridge("log", "verify", "--log", str(log_dir))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    active = segments(log_dir)[-1]
    with open(active, "ab") as file:
        file.write(b"\x50\0\0")
    torn = _cdc_bridge("log", "verify", "--log", str(log_dir))
    assert torn.returncode == 1, torn.stdout + torn.stderr
    records = frames(active)
    overwrite(active, records[0][0] + 9, flipped(active, records[0][0] + 9))
    damaged = _cdc_bridge("log", "verify", "--log", str(log_dir))
    assert damaged.returncode == 2, damaged.stdout + damaged.stderr
    assert f"damaged: {active} byte {records[0][0]}" in damaged.stdout
    missing = _cdc_bridge("log", "verify", "--log", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.startswith("cdc-bridge: no event log at")


def test_a_partial_record_while_the_writer_runs_is_an_append_in_progress(log_dir: Path) -> None:
    with LocalLogEventSink(log_dir):
        with open(segments(log_dir)[-1], "ab") as file:  # as if a batch were being written right now
            file.write(b"\x50\0\0")
        result = verify("--log", str(log_dir))
    assert result.exit_code == 0, result.output
    assert f"the writer (pid {os.getpid()}) is running, so it is most likely being appended" in result.output
    assert "torn tail" not in result.output


def test_a_record_with_a_good_checksum_but_the_wrong_kind_is_damage(log_dir: Path) -> None:
    from bridge.eventlog import KIND_DEAD_LETTER, encode_meta, encode_record

    active = segments(log_dir)[-1]
    at = active.stat().st_size
    with open(active, "ab") as file:  # a dead letter in the events log: only a bug or a foreign hand puts it there
        file.write(encode_record(KIND_DEAD_LETTER, "letter-1", None, encode_meta([], None, None, None), b"{}"))
    result = verify("--log", str(log_dir))
    assert result.exit_code == 2, result.output
    assert f"damaged: {active} byte {at}: a record that passes its checksum but is not a well-formed event" in result.output
