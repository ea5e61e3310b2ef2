#!/usr/bin/env python3
"""Start and stop the real local stack: PostgreSQL (logical WAL), Kafka (KRaft) and Kafka Connect + Debezium.

No Docker needed. Everything lives under a state directory (default .state/local in the repository):
data, logs, pid files and stack.json, which records ports, DSNs and start-up times for tests and humans.

    python deploy/local/stack.py up                 # all three, on free ports
    python deploy/local/stack.py up postgres        # just PostgreSQL
    python deploy/local/stack.py status
    python deploy/local/stack.py env                # shell exports: eval "$(... env)"
    python deploy/local/stack.py connector add deploy/connectors/restaurant-postgres.json [--mappings DIR]
                                   [--keep-offsets | --reset-offsets]   # tables from the mappings
    python deploy/local/stack.py connector remove NAME [--reset-offsets]
    python deploy/local/stack.py down [--purge]

Exit status is non-zero, with one paragraph saying what is wrong and how to fix it, on any failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import connectors
import kafka_services
import pg_server
from jars import ensure_jars
from procs import StackError, load_json, pid_alive, save_json, state_dir_from_env, stop_pid

SERVICES = ("postgres", "kafka", "connect")
DEFAULT_MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def _stack_file(state: Path) -> Path:
    return state / "stack.json"


def _running(facts: dict, name: str) -> bool:
    if name == "postgres":
        # postmaster.pid holds more than the pid; its first line is the pid.
        pid_file = Path(facts.get("data_dir", "/nonexistent")) / "postmaster.pid"
        pid = int(pid_file.read_text().splitlines()[0]) if pid_file.exists() else None
    else:
        pid = facts.get("pid")
    return bool(pid) and pid_alive(int(pid))


def up(state: Path, wanted: list[str], ports: dict[str, int | None]) -> dict:
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    stack = load_json(_stack_file(state))
    started: list[str] = []
    try:
        for name in SERVICES:
            if name not in wanted:
                continue
            if _running(stack.get(name, {}), name):
                print(f"{name}: already running", flush=True)
                continue
            began = time.monotonic()
            if name == "postgres":
                stack[name] = pg_server.start(state, ports["postgres"])
            elif name == "kafka":
                stack[name] = kafka_services.start_broker(state, ensure_jars(), ports["kafka"])
            else:
                if not _running(stack.get("kafka", {}), "kafka"):
                    raise StackError("Kafka Connect needs the Kafka broker: start it too (`stack.py up kafka connect`).")
                stack[name] = kafka_services.start_connect(
                    state, ensure_jars(), stack["kafka"]["bootstrap_servers"], ports["connect"])
            stack[name]["started_in_s"] = round(time.monotonic() - began, 2)
            started.append(name)
            save_json(_stack_file(state), stack)
            print(f"{name}: started in {stack[name]['started_in_s']}s  {_summary(name, stack[name])}", flush=True)
    except BaseException:
        for name in reversed(started):
            _stop_one(stack, name)
        save_json(_stack_file(state), {k: v for k, v in stack.items() if k not in started})
        raise
    return stack


def _summary(name: str, facts: dict) -> str:
    if name == "postgres":
        return f"{facts['dsn']}  ({facts['version']})"
    if name == "kafka":
        return f"bootstrap {facts['bootstrap_servers']}  (Kafka {facts['version']}, KRaft)"
    return f"{facts['url']}  (Connect {facts['version']}, Debezium {facts['debezium_version']})"


def _stop_one(stack: dict, name: str) -> None:
    facts = stack.get(name)
    if not facts:
        return
    try:
        if name == "postgres":
            pg_server.stop(facts)
        else:
            state_pid = Path(facts["log"]).parent / "pid"
            stop_pid(state_pid)
    except StackError as exc:
        print(f"{name}: {exc}", file=sys.stderr)


def down(state: Path, purge: bool) -> None:
    stack = load_json(_stack_file(state))
    for name in reversed(SERVICES):
        if name in stack:
            was_running = _running(stack[name], name)
            _stop_one(stack, name)
            print(f"{name}: {'stopped' if was_running else 'was not running'}", flush=True)
    # PostgreSQL's folder lives outside the state directory when its account could not reach it there;
    # a plain `down` remembers it, so that a later `down --purge` still removes it.
    outside = set(stack.get("outside_homes", []))
    pg_home = stack.get("postgres", {}).get("home")
    if pg_home and not Path(pg_home).is_relative_to(state):
        outside.add(pg_home)
    if purge:
        for folder in [state, *map(Path, sorted(outside))]:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"removed {folder}")
    elif stack:
        save_json(_stack_file(state), {"outside_homes": sorted(outside)} if outside else {})


def status(state: Path) -> dict:
    stack = load_json(_stack_file(state))
    return {name: {**stack[name], "running": _running(stack[name], name)} for name in SERVICES if name in stack}


def env_lines(stack: dict) -> list[str]:
    """Exports for the commands that read them: `cdc-bridge legacy migrate|simulate` (the DSN) and `cdc-bridge
    run|check` with deploy/bridge.yaml's Debezium source and Kafka sink (the broker)."""
    lines = []
    if "postgres" in stack:
        lines.append(f"export BRIDGE_PG_DSN={stack['postgres']['dsn']}")
    if "kafka" in stack:
        lines.append(f"export BRIDGE_SOURCE__BOOTSTRAP_SERVERS={stack['kafka']['bootstrap_servers']}")
        lines.append(f"export BRIDGE_SINK__BOOTSTRAP_SERVERS={stack['kafka']['bootstrap_servers']}")
    if "connect" in stack:
        lines.append(f"# Kafka Connect: {stack['connect']['url']} (`stack.py connector add|remove` finds it itself)")
    return lines


def local_overrides(stack: dict) -> dict[str, str]:
    """Point a connector definition written for docker-compose at the local PostgreSQL."""
    if "postgres" not in stack:
        raise StackError("PostgreSQL is not part of this stack; start it first (`stack.py up postgres`).")
    return {"database.hostname": "127.0.0.1", "database.port": str(stack["postgres"]["port"]),
            "database.password": ""}


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise StackError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set database.dbname=restaurant")
        result[key] = value
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", help="state directory (default: $BRIDGE_STATE_DIR or .state/local)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download the Kafka, Connect and Debezium jars once")
    up_cmd = commands.add_parser("up", help="start services (default: all)")
    up_cmd.add_argument("services", nargs="*", metavar="SERVICE", help=f"any of {', '.join(SERVICES)}")
    for name in SERVICES:
        up_cmd.add_argument(f"--{name}-port", type=int, help=f"port for {name} (default: a free one)")
    down_cmd = commands.add_parser("down", help="stop services")
    down_cmd.add_argument("--purge", action="store_true", help="also delete the state directory")
    status_cmd = commands.add_parser("status", help="what runs where")
    status_cmd.add_argument("--json", action="store_true")
    commands.add_parser("env", help="print shell exports for the running stack")
    connector_cmd = commands.add_parser("connector", help="add or remove a Debezium connector")
    connector_sub = connector_cmd.add_subparsers(dest="action", required=True)
    add_cmd = connector_sub.add_parser(
        "add", help="create/update from a definition file and wait until RUNNING",
        description="Create or update a connector. table.include.list is derived from the mappings (--set wins). "
                    "A name used before keeps its offsets in Kafka Connect: adding it again is refused unless "
                    "--keep-offsets (resume there; its slot must still exist) or --reset-offsets (start afresh, "
                    "snapshot included).")
    add_cmd.add_argument("file", type=Path)
    add_cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    add_cmd.add_argument("--mappings", action="append", type=Path, metavar="PATH",
                         help=f"mapping files or folders whose tables to capture (default: {DEFAULT_MAPPINGS})")
    choice = add_cmd.add_mutually_exclusive_group()
    choice.add_argument("--keep-offsets", dest="offsets", action="store_const", const="keep", default="refuse",
                        help="a connector of this name existed: resume from its stored offsets")
    choice.add_argument("--reset-offsets", dest="offsets", action="store_const", const="reset",
                        help="a connector of this name existed: forget its offsets and start as new")
    remove_cmd = connector_sub.add_parser("remove")
    remove_cmd.add_argument("name")
    remove_cmd.add_argument("--reset-offsets", action="store_true",
                            help="also delete its stored offsets, so that the name can be added again afresh")
    args = parser.parse_args(argv)
    state = state_dir_from_env(args.state)
    try:
        if args.command == "fetch":
            ensure_jars()
        elif args.command == "up":
            ports = {name: getattr(args, f"{name}_port") for name in SERVICES}
            if unknown := sorted(set(args.services) - set(SERVICES)):
                raise StackError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
            up(state, args.services or list(SERVICES), ports)
            print(f"state: {state}\n" + "\n".join(env_lines(load_json(_stack_file(state)))))
        elif args.command == "down":
            down(state, args.purge)
        elif args.command == "status":
            report = status(state)
            if args.json:
                print(json.dumps(report, indent=2))
            elif not report:
                print(f"nothing started under {state}")
            for name, facts in report.items() if not args.json else ():
                print(f"{name}: {'running' if facts['running'] else 'STOPPED'}  {_summary(name, facts)}")
        elif args.command == "env":
            print("\n".join(env_lines(status(state))))
        elif args.action == "add":
            stack = status(state)
            if not stack.get("connect", {}).get("running"):
                raise StackError("Kafka Connect is not running; start it with `stack.py up`.")
            tables = connectors.tables_from_mappings(args.mappings or [DEFAULT_MAPPINGS])
            name, config = connectors.load_definition(
                args.file, {**local_overrides(stack), "table.include.list": tables, **_parse_sets(args.set)})
            connectors.add(stack["connect"]["url"], name, config, offsets=args.offsets)
            print(f"connector {name}: RUNNING  (tables {config['table.include.list']})")
        else:
            stack = status(state)
            removed = connectors.remove(stack["connect"]["url"], args.name, reset_offsets=args.reset_offsets)
            print(f"connector {args.name}: {'deleted' if removed else 'did not exist'}"
                  + (", offsets reset" if removed and args.reset_offsets else ""))
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stack: interrupted; services started by this command were stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
