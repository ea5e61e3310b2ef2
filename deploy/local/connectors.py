"""Add and remove Debezium connectors through Kafka Connect's REST API.

Kafka Connect keeps a source connector's offsets after the connector is deleted: a connector added again
under the same name resumes from them (the old LSN), which fails when the old replication slot is gone
and silently skips the snapshot when it is not. So a new connector is created STOPPED (Connect 3.7+),
its stored offsets are read (GET /connectors/{name}/offsets, Connect 3.6+), and only with none, or with
an explicit choice (keep them, or reset them with DELETE .../offsets), is it resumed.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from procs import StackError


def _request(method: str, url: str, body: dict | None = None) -> tuple[int, dict | list | None]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else None
        except ValueError:
            return exc.code, {"message": raw.decode(errors="replace")}
    except (urllib.error.URLError, OSError) as exc:
        raise StackError(f"Kafka Connect at {url} does not answer ({exc}). Is the stack up? `make stack-status`") from exc


def load_definition(path: Path, overrides: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Read a connector definition ({"name", "config"}, the body Connect's POST /connectors takes)."""
    try:
        definition = json.loads(path.read_text())
        name, config = definition["name"], dict(definition["config"])
    except FileNotFoundError:
        raise StackError(f"connector definition {path} does not exist") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path}: not a connector definition with 'name' and 'config' ({exc})") from exc
    config.update(overrides)
    return overrides.get("name", name), config


OFFSET_CHOICES = ("refuse", "keep", "reset")


def tables_from_mappings(paths: list[Path]) -> str:
    """`table.include.list` for the tables the mappings read: schema.table, comma-separated, sorted."""
    try:
        from bridge.mapping.loader import load_mappings
        from bridge.errors import MappingError
    except ImportError as exc:
        raise StackError(f"deriving the table list needs the bridge installed ({exc}): run this script with "
                         ".venv/bin/python, or give --set table.include.list=schema.table,...") from None
    try:
        mappings = load_mappings(paths)
    except MappingError as exc:
        raise StackError(f"cannot derive table.include.list from the mappings: {exc}") from None
    return ",".join(sorted({rule.qualified_table for rule in mappings.rules}))


def add(connect_url: str, name: str, config: dict[str, str], *, offsets: str = "refuse", timeout: float = 90) -> dict:
    """Create or update the connector, then wait until it and its task run; raise with the trace if not.

    A connector that does not exist yet but whose name has offsets stored from an earlier one is refused
    unless `offsets` is "keep" (resume from them) or "reset" (delete them: it starts as new, snapshot included).
    """
    if offsets not in OFFSET_CHOICES:
        raise ValueError(f"offsets must be one of {OFFSET_CHOICES}, not {offsets!r}")
    config = {k: v for k, v in config.items() if k != "name"}
    status, _ = _request("GET", f"{connect_url}/connectors/{name}")
    if status == 404:
        _create_stopped(connect_url, name, config, offsets)
    else:
        status, answer = _request("PUT", f"{connect_url}/connectors/{name}/config", config)
        if status >= 300:
            raise StackError(f"Kafka Connect refused connector {name!r} (HTTP {status}): {answer}")
    deadline = time.monotonic() + timeout
    last: dict | None = None
    while time.monotonic() < deadline:
        status, answer = _request("GET", f"{connect_url}/connectors/{name}/status")
        last = answer if isinstance(answer, dict) else None
        if status == 200 and last:
            states = [last["connector"]["state"], *(task["state"] for task in last.get("tasks", []))]
            if "FAILED" in states:
                traces = [t.get("trace", "") for t in last.get("tasks", []) if t.get("state") == "FAILED"]
                trace = (traces[0] if traces else last["connector"].get("trace", ""))[:3000]
                raise StackError(f"connector {name!r} failed to start:\n{trace}")
            if last.get("tasks") and all(state == "RUNNING" for state in states):
                return last
        time.sleep(0.5)
    raise StackError(f"connector {name!r} not running after {timeout:.0f}s; last status: {last}")


def _create_stopped(connect_url: str, name: str, config: dict[str, str], offsets: str) -> None:
    status, answer = _request("POST", f"{connect_url}/connectors",
                              {"name": name, "config": config, "initial_state": "STOPPED"})
    if status >= 300:
        raise StackError(f"Kafka Connect refused connector {name!r} (HTTP {status}): {answer}")
    stored = stored_offsets(connect_url, name)
    if stored and offsets == "refuse":
        _request("DELETE", f"{connect_url}/connectors/{name}")  # as it was: no connector of that name
        raise StackError(
            f"connector {name!r} existed before and Kafka Connect kept its offsets ({_describe(stored)}). Added "
            f"again it would resume there, which needs its replication slot {config.get('slot.name', '?')!r} to "
            "still hold that position (if the slot is gone the connector fails with 'trying to read change stream "
            "starting at ...'), and it takes no new snapshot. Choose: --keep-offsets to resume where the old "
            "connector stopped, or --reset-offsets to start as a new connector (with snapshot.mode=initial it "
            "snapshots the tables again, and the bridge publishes their rows again as snapshot reads); or "
            "choose another connector name")
    if stored and offsets == "reset":
        try:
            _reset_when_stopped(connect_url, name)
        except StackError:
            _request("DELETE", f"{connect_url}/connectors/{name}")
            raise
    status, answer = _request("PUT", f"{connect_url}/connectors/{name}/resume")
    if status >= 300:
        raise StackError(f"could not start connector {name!r} (HTTP {status}): {answer}")


def stored_offsets(connect_url: str, name: str) -> list[dict]:
    """The offsets Connect keeps for an existing connector (GET /connectors/{name}/offsets, Connect 3.6+)."""
    status, answer = _request("GET", f"{connect_url}/connectors/{name}/offsets")
    if status >= 300 or not isinstance(answer, dict):
        raise StackError(f"cannot read the offsets of connector {name!r} (HTTP {status}): {answer}; "
                         "this needs Kafka Connect 3.6 or later")
    return list(answer.get("offsets") or [])


def _describe(stored: list[dict]) -> str:
    parts = []
    for entry in stored:
        offset = entry.get("offset") or {}
        lsn = offset.get("lsn")
        where = f"LSN {lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}" if isinstance(lsn, int) else json.dumps(offset)
        parts.append(f"{json.dumps(entry.get('partition'))} at {where}")
    return "; ".join(parts)


def remove(connect_url: str, name: str, *, reset_offsets: bool = False) -> bool:
    """Delete the connector; with `reset_offsets` its stored offsets first, so the name can be reused afresh."""
    if reset_offsets:
        status, answer = _request("PUT", f"{connect_url}/connectors/{name}/stop")
        if status == 404:
            return False
        if status >= 300:
            raise StackError(f"could not stop connector {name!r} (HTTP {status}): {answer}")
        _reset_when_stopped(connect_url, name)
    status, answer = _request("DELETE", f"{connect_url}/connectors/{name}")
    if status == 404:
        return False
    if status >= 300:
        raise StackError(f"could not delete connector {name!r} (HTTP {status}): {answer}")
    return True


def _reset_when_stopped(connect_url: str, name: str, timeout: float = 30) -> None:
    """DELETE .../offsets answers 400 until the connector's tasks have really stopped: ask until it is done."""
    deadline = time.monotonic() + timeout
    while True:
        status, answer = _request("DELETE", f"{connect_url}/connectors/{name}/offsets")
        if status < 300:
            return
        if time.monotonic() >= deadline:
            raise StackError(f"could not reset the offsets of connector {name!r} (HTTP {status}): {answer}")
        time.sleep(0.5)


def names(connect_url: str) -> list[str]:
    _, answer = _request("GET", f"{connect_url}/connectors")
    return list(answer or [])
