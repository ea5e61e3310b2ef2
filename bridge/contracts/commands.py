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


@contracts_group.command("check")
@_dir_option
@click.pass_context
def check_command(ctx: click.Context, folder: Path) -> None:
    """Snapshots, lock, contiguous revisions, compatibility within each major, examples; exit 1 on problems."""
    from bridge.contracts.check import run_check

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
