"""`cdc-bridge mappings validate|test`: treat mapping files like code in CI.

validate: load and compile mapping files, report per file (rules, tables, event types, which tables need
old rows) or every problem as `file:line: rule 'id', field 'path': ...`; exit 2 on a problem.
test: run the golden cases next to the mappings; print PASS/FAIL with a diff of expected vs actual;
exit 1 when a case fails, 2 when a mapping or case file does not load.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bridge.errors import MappingError

if TYPE_CHECKING:
    from bridge.mapping.compiled import CompiledRule

DEFAULT_PATH = Path("mappings")


@click.group("mappings")
def mappings_group() -> None:
    """Validate table-to-event mapping files and run their golden test cases."""


@mappings_group.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.pass_context
def validate(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Load mapping files (default: ./mappings) and report rules, tables and problems."""
    from bridge.mapping.loader import (
        check_files,  # imported here: `cdc-bridge --help` stays fast
    )

    try:
        reports = check_files(paths or (DEFAULT_PATH,))
    except MappingError as exc:
        click.echo(f"cdc-bridge: {exc}", err=True)
        ctx.exit(2)
    if not reports:
        where = ", ".join(map(str, paths or (DEFAULT_PATH,)))
        click.echo(f"cdc-bridge: no mapping files (*.yaml) in {where}", err=True)
        ctx.exit(2)
    failed = False
    for report in reports:
        if report.problems:
            failed = True
            click.echo(f"{report.path}: {len(report.problems)} problem{'s' if len(report.problems) > 1 else ''}")
            for problem in report.problems:
                click.echo(f"  {problem}")
            continue
        rules = report.rules
        tables = sorted({rule.table for rule in rules})
        events = sorted({emit.type for rule in rules for emit in rule.emits})
        ignoring = sum(rule.ignore for rule in rules)
        click.echo(f"{report.path}: ok: {len(rules)} rules ({ignoring} ignore), {len(tables)} tables "
                   f"({', '.join(tables)}), {len(events)} event types")
        if report.contracts:
            click.echo(f"  every emit fits its contract in {report.contracts}; events are checked against it before "
                       "they are published")
        else:
            click.echo(f"  no contracts folder next to it ({Path(report.path).parent / 'contracts'}): its events are "
                       "published unchecked (see the README's Contracts section)")
        dual = _dual_published(rules)
        for event, majors in dual.items():
            click.echo(f"  dual publishing: {event} as v{' and v'.join(map(str, majors))} (a migration window; the "
                       "retired_events setting ends it)")
        needing: dict[str, list[str]] = {}
        for rule in rules:
            if rule.reads_before:
                needing.setdefault(rule.qualified_table, []).append(rule.id)
        for table, ids in needing.items():
            click.echo(f"  {table}: old rows needed by {', '.join(ids)} "
                       f"(REPLICA IDENTITY FULL or the prior-row store)")
    if failed:
        ctx.exit(2)


def _dual_published(rules: tuple[CompiledRule, ...]) -> dict[str, list[int]]:
    """Event types (without major) that the rules publish in more than one major."""
    majors: dict[str, set[int]] = {}
    for emit in (e for rule in rules for e in rule.emits):
        majors.setdefault(emit.type.rpartition(".v")[0], set()).add(emit.major)
    return {event: sorted(found) for event, found in majors.items() if len(found) > 1}


@mappings_group.command("test")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("-q", "--quiet", is_flag=True, help="Print failing cases only.")
@click.pass_context
def test(ctx: click.Context, paths: tuple[Path, ...], quiet: bool) -> None:
    """Run golden cases (default: every <mapping>.tests folder under ./mappings)."""
    from bridge.mapping.golden import run_golden

    try:
        outcomes = run_golden(paths or (DEFAULT_PATH,))
    except MappingError as exc:
        click.echo(f"cdc-bridge: {exc}", err=True)
        ctx.exit(2)
    failures = [o for o in outcomes if not o.passed]
    for outcome in outcomes:
        if not outcome.passed:
            click.echo(f"FAIL {outcome.case.label}")
            click.echo("\n".join(f"     {line}" for line in outcome.report.splitlines()))
        elif not quiet:
            click.echo(f"PASS {outcome.case.label}")
    if not outcomes:
        click.echo("no golden cases found (expected <mapping>.tests/*.yaml next to a mapping)")
        ctx.exit(1)
    click.echo(f"{len(outcomes) - len(failures)} passed, {len(failures)} failed")
    if failures:
        ctx.exit(1)
