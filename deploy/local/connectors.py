"""Add and remove Debezium connectors through Kafka Connect's REST API."""

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


def add(connect_url: str, name: str, config: dict[str, str], *, timeout: float = 90) -> dict:
    """Create or update the connector, then wait until it and its task run; raise with the trace if not."""
    config = {k: v for k, v in config.items() if k != "name"}
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


def remove(connect_url: str, name: str) -> bool:
    status, answer = _request("DELETE", f"{connect_url}/connectors/{name}")
    if status == 404:
        return False
    if status >= 300:
        raise StackError(f"could not delete connector {name!r} (HTTP {status}): {answer}")
    return True


def names(connect_url: str) -> list[str]:
    _, answer = _request("GET", f"{connect_url}/connectors")
    return list(answer or [])
