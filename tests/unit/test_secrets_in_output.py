"""No command prints a password: every failure path of every subcommand, with a secret planted in every
DSN, address and setting that can hold one (argument, config file, environment variable), is run for
real against a closed local port, and the secret must appear nowhere in stdout, stderr or log files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from bridge.cli import cli

REPO = Path(__file__).resolve().parents[2]
MAPPINGS = REPO / "mappings" / "restaurant.yaml"
CONTRACTS = REPO / "mappings" / "contracts"
SECRET = f"S3cr3t-{uuid.uuid4().hex[:12]}"  # unique per run: nothing else prints it by chance


def _closed_port() -> int:
    with socket.socket() as probe:  # bound, never listened on, then closed: connections are refused
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PORT = _closed_port()

# Every way a password can sit in a PostgreSQL DSN, well-formed (the server refuses the connection) or not
# (libpq's parser quotes the string in its own message).
DSNS = {
    "url": f"postgresql://bridge:{SECRET}@127.0.0.1:{PORT}/restaurant",
    "keywords": f"host=127.0.0.1 port={PORT} user=bridge password={SECRET} dbname=restaurant",
    "query": f"postgresql://bridge@127.0.0.1:{PORT}/restaurant?password={SECRET}&sslmode=disable",
    "bad-port": f"postgresql://bridge:{SECRET}@127.0.0.1:notaport/restaurant",
    "no-scheme": f"bridge:{SECRET}@127.0.0.1:{PORT}/restaurant",
    "broken-ipv6": f"postgresql://bridge:{SECRET}@[::1",
    "unterminated-quote": f"host=127.0.0.1 port={PORT} password='{SECRET}",
}
# Kafka addresses take no password, but one pasted there (a URL with user info) must not be echoed either.
BOOTSTRAPS = {
    "plain": f"127.0.0.1:{PORT}",
    "userinfo": f"bridge:{SECRET}@127.0.0.1:{PORT}",
    "url": f"SASL_SSL://bridge:{SECRET}@127.0.0.1:{PORT}",
}
# Variables a secret may sit in without the command reading them: they must not leak either.
BACKGROUND_ENV = {
    "PGPASSWORD": SECRET,
    "BRIDGE_PG_DSN": DSNS["url"],
    "LEGACY_DSN": DSNS["keywords"],
    "BRIDGE_SOURCE__DSN": DSNS["url"],
    "BRIDGE_SINK__BOOTSTRAP_SERVERS": BOOTSTRAPS["userinfo"],
}


@dataclass
class Case:
    command: tuple[str, ...]  # the subcommand's path, e.g. ("legacy", "migrate")
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    config: str | None = None  # YAML for --config ({work} is the case's working directory)
    label: str = ""  # what is planted where, for the test id

    @property
    def name(self) -> str:
        return " ".join((*self.command, self.label or self.args[1:2] and _variant(self.args[1]) or "", *self.env))


def _variant(value: str) -> str:
    return next((f"{kind} DSN" for kind, dsn in DSNS.items() if dsn == value), value[:40])


def _run_config(source: str, sink: str = "{kind: locallog, path: '{work}/events'}") -> str:
    # outage_limit_s 0: a refused connection ends the run at once (exit 3) instead of being waited for
    return (f"mappings: ['{MAPPINGS}']\nsource: {source}\nsink: {sink}\nstate: {{path: '{{work}}/prior-rows.sqlite'}}\n"
            "pipeline: {outage_limit_s: 0}\nlogging: {level: DEBUG}\n")


def _pgoutput(dsn: str) -> str:
    return "{kind: pgoutput, dsn: '" + dsn.replace("'", "''") + "', slot_busy_wait_s: 0}"


CASES: list[Case] = [
    *[Case(("legacy", "migrate"), ["--dsn", dsn]) for dsn in DSNS.values()],
    Case(("legacy", "migrate"), env={"BRIDGE_PG_DSN": DSNS["url"]}),
    Case(("legacy", "migrate"), env={"BRIDGE_PG_DSN": DSNS["no-scheme"]}),
    *[Case(("legacy", "simulate"), ["--dsn", dsn, "--count", "1"]) for dsn in DSNS.values()],
    Case(("legacy", "simulate"), ["--count", "1", "--migrate"], env={"LEGACY_DSN": DSNS["query"]}),
    Case(("legacy", "simulate"), ["--count", "1"], env={"LEGACY_DSN": DSNS["broken-ipv6"]}),
    *[Case(("demo",), ["--dsn", dsn, "--state", "{work}", "--no-traffic", "--duration", "1"]) for dsn in DSNS.values()],
    Case(("demo",), ["--dsn", DSNS["url"], "--state", "{work}", "--traffic", "--duration", "1"]),
    # run: the direct source's DSN in the file, in the environment, and the config file named by the environment
    *[Case(("run",), ["--config", "{config}"], config=_run_config(_pgoutput(dsn)), label=f"source.dsn {kind}")
      for kind, dsn in DSNS.items()],
    Case(("run",), ["--config", "{config}"], env={"BRIDGE_SOURCE__DSN": DSNS["url"]},
         config=_run_config("{kind: pgoutput}"), label="url DSN"),
    Case(("run",), ["--config", "{config}"], env={"BRIDGE_SOURCE__DSN": DSNS["no-scheme"]},
         config=_run_config("{kind: pgoutput}"), label="no-scheme DSN"),
    Case(("run",), env={"BRIDGE_CONFIG": "{config}"}, config=_run_config(_pgoutput(DSNS["keywords"])),
         label="source.dsn keywords"),
    # run: Kafka addresses of the Debezium source and of the Kafka sink, in the file and in the environment
    *[Case(("run",), ["--config", "{config}"], label=f"source.bootstrap_servers {kind}",
           config=_run_config(f"{{kind: debezium, bootstrap_servers: '{servers}', bootstrap_timeout_s: 1}}"))
      for kind, servers in BOOTSTRAPS.items()],
    Case(("run",), ["--config", "{config}"], env={"BRIDGE_SOURCE__BOOTSTRAP_SERVERS": BOOTSTRAPS["url"]},
         config=_run_config("{kind: debezium, bootstrap_timeout_s: 1}"), label="url address"),
    *[Case(("run",), ["--config", "{config}"], label=f"sink.bootstrap_servers {kind}",
           config=_run_config(_pgoutput(DSNS["url"]), f"{{kind: kafka, bootstrap_servers: '{servers}', "
                                                      "bootstrap_timeout_s: 1}"))
      for kind, servers in BOOTSTRAPS.items()],
    # run: a config file that does not parse, or does not validate, next to a DSN
    Case(("run",), ["--config", "{config}"], label="YAML error on the DSN's line",
         config=f"source:\n  kind: pgoutput\n  dsn: {DSNS['url']}: x\n"),
    Case(("run",), ["--config", "{config}"], label="invalid settings beside the DSN",
         config=f"source: {{kind: pgoutput, dsn: '{DSNS['url']}', slot: x}}\nsink: {{partitions: many}}\n"),
    # check: the same settings as run, read by the preflight
    *[Case(("check",), ["--config", "{config}"], config=_run_config(_pgoutput(dsn)), label=f"source.dsn {kind}")
      for kind, dsn in DSNS.items()],
    Case(("check",), ["--config", "{config}"], env={"BRIDGE_SOURCE__DSN": DSNS["url"]},
         config=_run_config("{kind: pgoutput}"), label="url DSN"),
    Case(("check",), ["--config", "{config}", "--json"], label="sink.bootstrap_servers url",
         config=_run_config(_pgoutput(DSNS["url"]), f"{{kind: kafka, bootstrap_servers: '{BOOTSTRAPS['url']}', "
                                                    "bootstrap_timeout_s: 1}")),
    # backfill: the source's DSN, or its own --dsn / BRIDGE_BACKFILL_DSN
    *[Case(("backfill",), ["--config", "{config}"], config=_run_config(_pgoutput(dsn)), label=f"source.dsn {kind}")
      for kind, dsn in DSNS.items()],
    *[Case(("backfill",), ["--config", "{config}", "--dsn", dsn], config=_run_config("{kind: debezium}"),
           label=f"--dsn {kind}") for kind, dsn in DSNS.items()],
    Case(("backfill",), ["--config", "{config}", "--dry-run"], env={"BRIDGE_BACKFILL_DSN": DSNS["url"]},
         config=_run_config("{kind: debezium}"), label="BRIDGE_BACKFILL_DSN url"),
    # commands without a DSN: the secrets in the environment stay unprinted when they fail
    Case(("mappings", "validate"), ["{work}/missing.yaml"], env=dict(BACKGROUND_ENV), label="missing file"),
    Case(("mappings", "test"), ["{work}/missing.yaml"], env=dict(BACKGROUND_ENV), label="missing file"),
    *[Case(("contracts", name), [*extra, "--dir", "{work}/missing"], env=dict(BACKGROUND_ENV), label="missing folder")
      for name, extra in (("list", []), ("show", ["OrderPlaced"]), ("check", []), ("publish", []))],
    Case(("tail",), ["--log", "{work}/no-log", "--no-follow"], env=dict(BACKGROUND_ENV), label="missing log"),
    Case(("log", "verify"), ["--log", "{work}/no-log"], env=dict(BACKGROUND_ENV), label="missing log"),
    Case(("contracts", "show"), ["NoSuchEvent", "--dir", str(CONTRACTS)], env=dict(BACKGROUND_ENV),
         label="unknown event"),
    # contracts export --config reads the same settings file as run, only for the sink's topics
    Case(("contracts", "export"), ["--format", "asyncapi", "--dir", str(CONTRACTS), "--config", "{config}"],
         label="YAML error on the DSN's line", config=f"source:\n  kind: pgoutput\n  dsn: {DSNS['url']}: x\n"),
    Case(("contracts", "export"), ["--format", "asyncapi", "--dir", str(CONTRACTS), "--config", "{config}"],
         label="invalid settings beside the DSN",
         config=f"source: {{kind: pgoutput, dsn: '{DSNS['url']}', slot: x}}\nsink: {{partitions: many}}\n"),
]


@dataclass
class Outcome:
    case: Case
    returncode: int
    output: str  # stdout and stderr
    files: dict[str, str]  # files the command wrote under its working directory (logs), by name


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    """Every case run as its own process (forked from one that imported the CLI once: it stays quick)."""
    root = tmp_path_factory.mktemp("secrets")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "LEGACY_", "PG"))}
    jobs, works = [], []
    for index, case in enumerate(CASES):
        work, config = root / f"case{index}", root / f"config{index}" / "bridge.yaml"
        work.mkdir()
        config.parent.mkdir()

        def fill(text: str, work: Path = work, config: Path = config) -> str:
            return text.replace("{work}", str(work)).replace("{config}", str(config))

        if case.config is not None:
            config.write_text(fill(case.config))
        jobs.append({"argv": [*case.command, *map(fill, case.args)], "env": {**base_env, **{k: fill(v) for k, v in case.env.items()}},
                     "cwd": str(work), "output": str(root / f"output{index}.txt"), "timeout_s": 120})
        works.append(work)
    done = subprocess.run([sys.executable, "-m", "tests.support.forked_cli"], input=json.dumps(jobs), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return [Outcome(case, code, Path(job["output"]).read_text(errors="replace"),
                    {str(path.relative_to(work)): path.read_text(errors="replace")
                     for path in work.rglob("*") if path.is_file() and path.stat().st_size < 10_000_000})
            for case, code, job, work in zip(CASES, json.loads(done.stdout), jobs, works)]


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_subcommand_has_failure_cases_here() -> None:
    missing = set(_leaf_commands(cli)) - {case.command for case in CASES}
    assert not missing, f"add failure cases with planted secrets for: {sorted(missing)}"


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case.name for case in CASES])
def test_a_failing_command_never_prints_the_password(outcomes: list[Outcome], index: int) -> None:
    outcome = outcomes[index]
    assert outcome.returncode != 0, f"expected a failure:\n{outcome.output}"
    assert outcome.output.strip(), "a failure says what went wrong"
    assert SECRET not in outcome.output, outcome.output
    for name, text in outcome.files.items():
        assert SECRET not in text, f"{name}:\n{text}"
    assert "Traceback" not in outcome.output, outcome.output


def test_the_failures_are_real_and_name_what_failed(outcomes: list[Outcome]) -> None:
    """Guards the test itself: the cases reached the connection or the parse, not a setup mistake."""
    by_name = {outcome.case.name: outcome for outcome in outcomes}
    migrate_url = by_name[Case(("legacy", "migrate"), ["--dsn", DSNS["url"]]).name]
    assert migrate_url.returncode == 3 and f"port={PORT}" in migrate_url.output and "Connection refused" in migrate_url.output
    unparseable = [o for o in outcomes if o.case.args[1:2] == [DSNS["no-scheme"]]]
    assert unparseable and all(o.returncode == 2 for o in unparseable), [o.output for o in unparseable]
    kafka = [o for o in outcomes if "bootstrap_timeout_s: 1" in (o.case.config or "")]
    assert kafka and all(o.returncode == 3 and "Kafka" in o.output for o in kafka), [o.output for o in kafka]
    demo = [o for o in outcomes if o.case.command == ("demo",)]
    assert all("bridge.log" in o.files or o.returncode == 2 for o in demo)  # its log file was searched too

