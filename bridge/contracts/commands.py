"""`cdc-bridge contracts list|show|export|check|publish`: the contracts, for their producers and consumers.

The folder is the ``contracts`` folder next to the mapping files (default ./mappings/contracts), or --dir.
check exits 1 when a contract change would break consumers or a snapshot is missing, 2 when a contract
file does not load.
"""

from __future__ import annotations

from pathlib import Path

import click

from bridge.errors import ContractError, MappingError

DEFAULT_FOLDER = Path("mappings/contracts")
DEFAULT_MAPPINGS = Path("mappings")

_dir_option = click.option("--dir", "folder", type=click.Path(path_type=Path), default=DEFAULT_FOLDER,
                           show_default=True, help="The contracts folder.")
_mappings_option = click.option("--mappings", "mapping_paths", multiple=True, type=click.Path(path_type=Path),
                                help="Mapping files or folders whose rules produce the events (default: ./mappings).")


@click.group("contracts")
def contracts_group() -> None:
    """List, show, export and check the versioned contracts of the published events."""


def _registry(ctx: click.Context, folder: Path):  # type: ignore[no-untyped-def]
    from bridge.contracts.registry import load_contracts

    if not folder.is_dir():
        click.echo(f"cdc-bridge: {folder}: no contracts folder (expected contract files like "
                   f"{folder}/order/OrderPlaced.yaml; see the README's Contracts section)", err=True)
        ctx.exit(2)
    try:
        return load_contracts(folder)
    except ContractError as exc:
        click.echo(f"cdc-bridge: {exc}", err=True)
        ctx.exit(2)


def _producers(mapping_paths: tuple[Path, ...]) -> dict[str, list[tuple[str, str]]]:
    """event type with major -> [(rule id, schema.table)] of the rules that emit it (none if mappings do not load)."""
    from bridge.mapping.loader import check_files

    try:
        reports = check_files(mapping_paths or (DEFAULT_MAPPINGS,))
    except MappingError:
        return {}
    produced: dict[str, list[tuple[str, str]]] = {}
    for rule in (r for report in reports for r in report.rules):
        for emit in rule.emits:
            produced.setdefault(emit.type, []).append((rule.id, rule.qualified_table))
    return {t: list(dict.fromkeys(p)) for t, p in produced.items()}


@contracts_group.command("list")
@_dir_option
@click.pass_context
def list_command(ctx: click.Context, folder: Path) -> None:
    """One line per event type and major: latest revision, aggregate, field count."""
    registry = _registry(ctx, folder)
    for major in registry.majors():
        click.echo(f"{major.event_type:<55} rev {major.revision:<3} {major.contract.aggregate:<12} "
                   f"{len(major.fields)} fields  {major.contract.path}")


@contracts_group.command("show")
@click.argument("event_type")
@_dir_option
@_mappings_option
@click.pass_context
def show_command(ctx: click.Context, event_type: str, folder: Path, mapping_paths: tuple[Path, ...]) -> None:
    """Fields, types, revisions and producing rules of one event type (OrderPlaced, or its full type)."""
    from bridge.contracts.describe import describe

    registry = _registry(ctx, folder)
    contract = registry.find(event_type)
    if contract is None:
        names = ", ".join(c.name for c in registry)
        click.echo(f"cdc-bridge: no contract '{event_type}' in {folder} (known: {names})", err=True)
        ctx.exit(2)
    click.echo(describe(contract, _producers(mapping_paths)), nl=False)


@contracts_group.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonschema", "asyncapi"]), required=True,
              help="jsonschema: every revision's JSON Schema; asyncapi: one AsyncAPI 3.0.0 document of the topics.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              help="Write into this folder (created if missing); without it, write to stdout.")
@_dir_option
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="asyncapi: take the topics from this settings file's sink (topic_template, topics), read as "
                   "`run` reads it; without it, the default {namespace}.{aggregate_type}.")
@click.option("--json", "as_json", is_flag=True, help="asyncapi: JSON (asyncapi.json) instead of YAML (asyncapi.yaml).")
@click.option("--title", default="cdc-bridge domain events", show_default=True, help="asyncapi: info.title.")
@click.option("--doc-version", help="asyncapi: info.version (default: cdc-bridge's version).")
@click.pass_context
def export_command(ctx: click.Context, fmt: str, out: Path | None, folder: Path, config_file: Path | None,
                   as_json: bool, title: str, doc_version: str | None) -> None:
    """Write the contracts for consumers: JSON Schemas, or the AsyncAPI document of the topics.

    \b
    jsonschema --out DIR   DIR/<type>/<major>.<revision>.schema.json for every revision of every major
                           (the bytes of the committed snapshots).
    jsonschema             stdout: one JSON object, every revision's schema keyed by its dataschema URI
                           (the ce_dataschema header's value), e.g. urn:cdc-bridge:contract:<type>:1.0.
    asyncapi --out DIR     DIR/asyncapi.yaml (or asyncapi.json with --json).
    asyncapi               stdout: the document.
    """
    registry = _registry(ctx, folder)
    if fmt == "jsonschema":
        _export_jsonschema(registry, out)
        return
    from bridge import __version__
    from bridge.contracts.asyncapi import asyncapi_document, render_json, render_yaml

    document = asyncapi_document(registry, _topic_for(config_file), title=title,
                                 version=doc_version or __version__)
    text = render_json(document) if as_json else render_yaml(document)
    if out is None:
        click.echo(text, nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    target = out / ("asyncapi.json" if as_json else "asyncapi.yaml")
    target.write_text(text)
    click.echo(f"wrote {target}")


def _export_jsonschema(registry, out: Path | None) -> None:  # type: ignore[no-untyped-def]
    import json

    from bridge.contracts.schema import revision_schema, schema_bytes

    everything: dict[str, object] = {}
    written = 0
    for major in registry.majors():
        for revision in range(major.revision + 1):
            schema = revision_schema(major, revision)
            if out is None:
                everything[major.dataschema(revision)] = schema
                continue
            target = out / major.contract.type / f"{major.number}.{revision}.schema.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(schema_bytes(schema))
            written += 1
    if out is None:
        click.echo(json.dumps(everything, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        click.echo(f"wrote {written} schema files under {out}")


def _topic_for(config_file: Path | None):  # type: ignore[no-untyped-def]
    """The sink's topic naming: from the settings file (environment overrides included, as for `run`); a bad
    file raises ConfigurationError, which main() prints as one scrubbed line with exit code 2, as for `run`."""
    from bridge.settings import KafkaSink, load_settings

    if config_file is None:
        return KafkaSink().topic_for
    sink = load_settings(config_file).sink
    if not isinstance(sink, KafkaSink):
        # A local-log sink has no topics; the document still says where a Kafka sink would publish.
        click.echo(f"cdc-bridge: {config_file}: sink.kind is {sink.kind}, not kafka: showing the default topics",
                   err=True)
        return KafkaSink().topic_for
    return sink.topic_for


@contracts_group.command("check")
@_dir_option
@click.option("--upcasters", "modules", multiple=True, metavar="MODULE",
              help="Import this Python module first: it registers the upcaster functions contracts name "
                   "(`function:` steps), so that they are checked on the examples.")
@click.pass_context
def check_command(ctx: click.Context, folder: Path, modules: tuple[str, ...]) -> None:
    """Snapshots, lock, contiguous revisions, compatibility within each major, examples, upcasters; exit 1 on
    problems."""
    import importlib

    from bridge.contracts.check import run_check

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            click.echo(f"cdc-bridge: --upcasters {module}: cannot import it: {exc}", err=True)
            ctx.exit(2)

    if not folder.is_dir():
        _registry(ctx, folder)  # says what a contracts folder is and exits 2
    report = run_check(folder)
    for problem in report.all:
        click.echo(problem)
    if report.load_problems:
        click.echo(f"contracts check: {len(report.load_problems)} contract file problem(s) in {folder} "
                   f"(and {len(report.problems)} other problem(s)): fix the contract files first", err=True)
        ctx.exit(2)
    if report.problems:
        click.echo(f"contracts check: {len(report.all)} problem(s) in {folder}", err=True)
        ctx.exit(1)
    click.echo(f"contracts check: ok: {report.revisions} revision(s) and {report.examples} example(s) "
               f"in {folder}")


@contracts_group.command("publish")
@_dir_option
@click.pass_context
def publish_command(ctx: click.Context, folder: Path) -> None:
    """Write the snapshot and lock entry of every revision that has none (then commit them)."""
    from bridge.contracts.snapshots import LOCK_FILE, publish

    registry = _registry(ctx, folder)
    try:
        written = publish(registry)
    except ContractError as exc:
        click.echo(f"cdc-bridge: {exc}", err=True)
        ctx.exit(1)
    for line in written:
        click.echo(line)
    if written:
        click.echo(f"contracts publish: {len(written)} snapshot(s) written; commit {folder / 'schemas'} and "
                   f"{folder / LOCK_FILE}")
    else:
        click.echo("contracts publish: nothing to publish: every revision has its snapshot")
