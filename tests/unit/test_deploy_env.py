"""The deployment files name only environment variables something reads, and the systemd unit gives the
daemon writable paths: under ProtectSystem=strict only its StateDirectory and ReadWritePaths are writable,
and relative paths in /etc/cdc-bridge/bridge.yaml resolve under /etc/cdc-bridge, which is not."""

from __future__ import annotations

import os
import re
import shutil
import types
import typing
from pathlib import Path, PurePosixPath

import click
import pytest
import yaml
from pydantic import BaseModel

from bridge.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "cdc-bridge.service"
ENV_FILE = DEPLOY / "systemd" / "cdc-bridge.env"
NAME = re.compile(r"\bBRIDGE_[A-Z0-9_]*[A-Z0-9]\b")
# Files that configure the daemon itself: every BRIDGE_* variable in them must be one `run` reads.
DAEMON_FILES = [UNIT, ENV_FILE, DEPLOY / "docker-compose.yml", DEPLOY / "Dockerfile", DEPLOY / "bridge.yaml"]


def _section_models(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models a settings field may hold (every variant of a discriminated union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _section_models(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _section_models(arg)]
    return []


def run_variables() -> set[str]:
    """What `run` reads: BRIDGE_<FIELD>, BRIDGE_<SECTION>__<FIELD> of any variant, and --config's variable."""
    from bridge.cli import cli

    names = set()
    for field_name, field in Settings.model_fields.items():
        models = _section_models(field.annotation)
        if not models:
            names.add(f"BRIDGE_{field_name.upper()}")
        for model in models:
            names.update(f"BRIDGE_{field_name.upper()}__{sub.upper()}" for sub in model.model_fields)
    names.update(param.envvar for param in cli.commands["run"].params if isinstance(param.envvar, str))
    return names


def _command_variables(command: click.Command) -> set[str]:
    names = {p.envvar for p in command.params if isinstance(p.envvar, str)}
    for sub in getattr(command, "commands", {}).values():
        names |= _command_variables(sub)
    return names


def _variables_read_by_scripts() -> set[str]:
    """Variables the local stack's scripts and the tests read from the environment."""
    read = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\()\s*["'](BRIDGE_\w+)["']""")
    files = [*(DEPLOY / "local").glob("*.py"), *(REPO / "tests").rglob("*.py")]
    return {name for path in files for name in read.findall(path.read_text())}


def test_run_variables_are_derived_from_the_settings() -> None:
    names = run_variables()
    assert {"BRIDGE_SOURCE__DSN", "BRIDGE_SOURCE__BOOTSTRAP_SERVERS", "BRIDGE_SINK__PATH", "BRIDGE_STATE__PATH",
            "BRIDGE_METRICS__PORT", "BRIDGE_SOURCE_ID", "BRIDGE_CONFIG"} <= names
    assert "BRIDGE_PG_DSN" not in names


@pytest.mark.parametrize("path", DAEMON_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_the_daemons_deploy_files_name_only_variables_run_reads(path: Path) -> None:
    named = set(NAME.findall(path.read_text()))
    assert named - run_variables() == set(), f"{path.name} sets variables `cdc-bridge run` ignores"


def test_the_local_stack_names_only_variables_something_reads() -> None:
    from bridge.cli import cli

    known = run_variables() | _command_variables(cli) | _variables_read_by_scripts()
    for path in (DEPLOY / "local").rglob("*"):
        if path.is_file() and path.suffix in (".py", ".sh", ".xml", ""):
            unread = set(NAME.findall(path.read_text(errors="replace"))) - known
            assert unread == set(), f"{path.relative_to(REPO)} names variables nothing reads: {sorted(unread)}"


# --- the unit's effective paths ------------------------------------------------------------------------

def _unit_entries() -> list[tuple[str, str]]:
    """(key, value) of the [Service] section, repeated keys kept (systemd allows them)."""
    entries, section = [], ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            entries.append((key.strip(), value.strip()))
    return entries


def _unit_environment() -> dict[str, str]:
    env = {}
    for key, value in _unit_entries():
        if key == "Environment":
            for assignment in value.split():
                name, _, setting = assignment.strip('"').partition("=")
                env[name] = setting
    return env


def _env_file(kinds: set[str]) -> dict[str, str]:
    """The example EnvironmentFile with the lines for these source/sink kinds uncommented."""
    env, applies = {}, True
    for line in ENV_FILE.read_text().splitlines():
        if match := re.match(r"#\s*(source|sink)\.kind:\s*(\w+)", line):
            applies = match.group(2) in kinds
        elif match := re.match(r"#?(BRIDGE_\w+)=(\S+)", line):
            if applies or not line.startswith("#"):
                env[match.group(1)] = match.group(2)
        elif not line.strip():
            applies = True
    return env


def _writable(unit: list[tuple[str, str]]) -> list[PurePosixPath]:
    places = [PurePosixPath("/var/lib") / v for k, v in unit if k == "StateDirectory"]
    places += [PurePosixPath(p.lstrip("-")) for k, v in unit if k == "ReadWritePaths" for p in v.split()]
    return places


VARIANTS = [({"kind": "debezium"}, {"kind": "kafka"}), ({"kind": "pgoutput", "dsn": "postgresql://h/db"},
                                                         {"kind": "locallog", "path": "../.state/bridge/events"})]


@pytest.mark.parametrize(("source", "sink"), VARIANTS, ids=["debezium-kafka", "pgoutput-locallog"])
def test_the_units_state_and_log_paths_are_writable_under_protect_system_strict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: dict, sink: dict) -> None:
    unit = _unit_entries()
    assert ("ProtectSystem", "strict") in unit
    config_path = PurePosixPath(next(v for k, v in unit if k == "ExecStart").split("--config", 1)[1].split()[0])
    # The example config installed where the unit reads it (a fake root), with this variant's source and sink.
    root = tmp_path / "root"
    installed = root / config_path.relative_to("/")
    installed.parent.mkdir(parents=True)
    config = yaml.safe_load((DEPLOY / "bridge.yaml").read_text())
    config.update(source=source, sink=sink, mappings=[str(REPO / "mappings" / "restaurant.yaml")])
    installed.write_text(yaml.safe_dump(config))
    for name in [n for n in list(os.environ) if n.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    kinds = {source["kind"], sink["kind"]}
    for name, value in {**_env_file(kinds), **_unit_environment()}.items():
        monkeypatch.setenv(name, value)
    working = PurePosixPath(next((v for k, v in unit if k == "WorkingDirectory"), "/"))
    settings = load_settings(installed)

    def effective(path: Path) -> PurePosixPath:
        path = Path(os.path.normpath(path))
        if path.is_relative_to(root):
            return PurePosixPath("/") / path.relative_to(root)
        return PurePosixPath(os.path.normpath(working / path)) if not path.is_absolute() else PurePosixPath(path)

    paths = {"state.path": effective(settings.state.path)}
    if settings.sink.kind == "locallog":
        paths["sink.path"] = effective(settings.sink.path)
    writable = _writable(unit)
    for setting, path in paths.items():
        assert any(path.is_relative_to(place) for place in writable), \
            f"{setting} is {path}: not under {[str(w) for w in writable]}, so read-only under ProtectSystem=strict"
    shutil.rmtree(root)
