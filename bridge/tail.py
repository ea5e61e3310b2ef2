"""`cdc-bridge tail`: print the local event log readably and follow it as it grows.

One line per event: offset, commit time, event name and version, subject, and the payload as
`key=value` pairs (nested values as compact JSON, cut short). `--json` prints one JSON object per line
instead, for scripts. Ctrl-C stops it quietly. A damaged log (not a torn tail: see bridge/logdamage.py)
stops it with exit code 2 and one line naming the file, byte and offset, after the events before the damage.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import click

from bridge.eventlog import DEAD_LETTERS, DEFAULT_LOG_DIR, EVENTS, KIND_DEAD_LETTER
from bridge.sinks.locallog_reader import EventLogReader, LogRecord

DEFAULT_LAST = 10
NESTED_WIDTH = 60
POLL_INTERVAL_S = 0.2


@click.command("tail")
@click.option("--log", "log_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_LOG_DIR,
              envvar="BRIDGE_EVENT_LOG", show_default=True,
              help="The event log directory (the local log sink's path) [env: BRIDGE_EVENT_LOG].")
@click.option("--from-start", is_flag=True, help="Start at the first event.")
@click.option("--offset", type=click.IntRange(min=0), metavar="N", help="Start at offset N (an event's ordinal).")
@click.option("--last", type=click.IntRange(min=0), metavar="N",
              help=f"Start with the last N matching events [default: {DEFAULT_LAST}].")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Keep printing events as they are appended (Ctrl-C stops).")
@click.option("--type", "types", multiple=True, metavar="GLOB",
              help="Only events whose type matches, e.g. 'OrderPlaced', 'Order*', '*.menu_item.*' (repeatable).")
@click.option("--aggregate", "aggregates", multiple=True, metavar="TYPE[/ID]",
              help="Only events of this aggregate type, or of one aggregate: order, order/42 (repeatable).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line: offset, id, type, subject, time, sequence, data.")
@click.option("--dead-letters", is_flag=True, help="Read the dead-letter log instead of the events.")
def tail_command(log_dir: Path, from_start: bool, offset: int | None, last: int | None, follow: bool,
                 types: tuple[str, ...], aggregates: tuple[str, ...], as_json: bool, dead_letters: bool) -> None:
    """Print the events of the local event log, then follow new ones as they arrive."""
    chosen = [flag for flag, given in (("--from-start", from_start), ("--offset", offset is not None),
                                       ("--last", last is not None)) if given]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} exclude each other: give one")
    reader = EventLogReader(log_dir, log=DEAD_LETTERS if dead_letters else EVENTS)
    matches = record_filter(types, aggregates)
    render = json_line if as_json else text_line
    try:
        if from_start or offset is not None:
            start = 0 if from_start else offset or 0
            records: Iterable[LogRecord] = (reader.follow(start, poll_interval_s=POLL_INTERVAL_S) if follow
                                            else reader.read(start))
            _print(records, matches, render)
        else:
            shown, end = reader.last(DEFAULT_LAST if last is None else last, matches)
            _print(shown, matches, render)
            if follow:
                _print(reader.follow(end, poll_interval_s=POLL_INTERVAL_S), matches, render)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        # The reader of our output went away (`| head`): stop quietly, and keep Python's exit flush quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _print(records: Iterable[LogRecord], matches: Callable[[LogRecord], bool],
           render: Callable[[LogRecord], str]) -> None:
    for record in records:
        if matches(record):
            click.echo(render(record))


def record_filter(types: tuple[str, ...], aggregates: tuple[str, ...]) -> Callable[[LogRecord], bool]:
    """True for records matching any --type glob (if given) and any --aggregate (if given)."""
    wanted_aggregates = [(spec.partition("/")[0], spec.partition("/")[2] or None) for spec in aggregates]

    def matches(record: LogRecord) -> bool:
        if types:
            full = record.type or ""
            parts = full.rsplit(".", 2)  # restaurant.order | OrderPlaced | v1
            candidates = (full, ".".join(parts[-2:]), parts[-2]) if len(parts) >= 2 else (full,)
            if not any(fnmatchcase(candidate, glob) for glob in types for candidate in candidates):
                return False
        if wanted_aggregates:
            aggregate_id = record.aggregate_id
            if not any(record.aggregate_type == kind and (wanted_id is None or aggregate_id == wanted_id)
                       for kind, wanted_id in wanted_aggregates):
                return False
        return True

    return matches


def text_line(record: LogRecord) -> str:
    if record.kind == KIND_DEAD_LETTER:
        return _dead_letter_line(record)
    full_type = record.type or "?"
    parts = full_type.rsplit(".", 2)
    short_type = ".".join(parts[-2:]) if len(parts) == 3 else full_type  # OrderPlaced.v1
    moment = record.time or ""
    moment = f"{moment[:10]} {moment[11:23]}" if len(moment) >= 23 else moment
    return "  ".join((
        click.style(f"{record.offset:>7}", dim=True),
        moment,
        click.style(short_type, fg="cyan", bold=True),
        click.style(record.subject or f"{record.aggregate_type}/{record.aggregate_id}", fg="yellow"),
        _payload(record.value),
    ))


def _dead_letter_line(record: LogRecord) -> str:
    try:
        letter = json.loads(record.value)
    except ValueError:
        return f"{record.offset:>7}  dead letter  {record.value[:200]!r}"
    change = letter.get("change") or {}
    details = {"rule": letter.get("rule"), "table": change.get("table"), "op": change.get("op"),
               "position": change.get("position"), "error": letter.get("error")}
    return "  ".join((click.style(f"{record.offset:>7}", dim=True),
                      click.style(f"dead letter ({letter.get('kind', '?')})", fg="red", bold=True),
                      " ".join(f"{k}={_scalar(v)}" for k, v in details.items() if v is not None)))


def _payload(value: bytes) -> str:
    try:
        data = json.loads(value)
    except ValueError:
        return repr(value[:NESTED_WIDTH])
    if isinstance(data, dict):
        return " ".join(f"{key}={_scalar(item)}" for key, item in data.items())
    return _scalar(data)


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in '"=' for c in value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return text if len(text) <= NESTED_WIDTH else text[:NESTED_WIDTH - 1] + "…"
    return json.dumps(value)  # numbers, true/false, null


def json_line(record: LogRecord) -> str:
    try:
        data = record.data()
    except ValueError:
        data = record.value.decode("utf-8", "replace")
    return json.dumps({"offset": record.offset, "id": record.id, "type": record.type, "subject": record.subject,
                       "time": record.time, "sequence": record.sequence, "data": data},
                      ensure_ascii=False, separators=(",", ":"))
