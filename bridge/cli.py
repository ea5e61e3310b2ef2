"""The `cdc-bridge` command line.

Every failure the bridge foresees is a BridgeError: it is printed as one line naming what is wrong
and what to do, and the process exits with that error's exit code (2: fix the input, 3: a service
is unavailable, retry later). Anything else is a bug and keeps its traceback. Whatever is printed on a
failure, and every log line, has the passwords of the command line, the environment and the settings
blanked out (bridge.redact): a library may quote a connection string in its own message.
"""

from __future__ import annotations

import io
import sys
import traceback
from pathlib import Path

import click

from bridge import __version__
from bridge.errors import BridgeError, ConfigurationError, ServiceUnavailable
from bridge.contracts.commands import contracts_group
from bridge.mapping.commands import mappings_group
from bridge.redact import dsn_problem, note_secrets_of_invocation, redacted_dsn, scrub
from bridge.backfill_command import backfill_command
from bridge.demo import demo_command
from bridge.preflight import check_command
from bridge.logverify import log_group
from bridge.tail import tail_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cdc-bridge")
def cli() -> None:
    """Turn a legacy PostgreSQL database's change stream into versioned domain events."""


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), envvar="BRIDGE_CONFIG",
              help="YAML settings file [env: BRIDGE_CONFIG]; environment variables BRIDGE_<SECTION>__<FIELD> override it")
@click.option("--exit-when-idle", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop (drained and committed) once nothing has been read or is in flight for this long: for batch runs.")
def run(config_file: Path | None, exit_when_idle: float | None) -> None:
    """Run the daemon: row changes in (Debezium, or PostgreSQL directly), domain events out, until SIGTERM.

    An unreachable Kafka or PostgreSQL is waited for (from the committed position, a line every few seconds
    saying what for) up to pipeline.outage_limit_s; then exit code 3. Wrong settings stop at once: exit code 2.
    """
    from bridge.daemon import run_daemon
    from bridge.observability import configure_logging
    from bridge.settings import load_settings

    settings = load_settings(config_file)
    configure_logging(settings.logging.level, settings.logging.format)
    run_daemon(settings, idle_exit_s=exit_when_idle)


@cli.group()
def legacy() -> None:
    """The legacy restaurant database: its schema and a simulator of its app's traffic."""


@legacy.command("migrate")
@click.option("--dsn", envvar="BRIDGE_PG_DSN", required=True, help="PostgreSQL URL [env: BRIDGE_PG_DSN]")
def legacy_migrate(dsn: str) -> None:
    """Create or upgrade the legacy restaurant schema in a database."""
    import psycopg

    from legacy_db.migrate import MigrationError, apply_migrations

    if problem := dsn_problem(dsn):
        raise ConfigurationError(f"--dsn: {problem}")
    try:
        applied = apply_migrations(dsn)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())  # psycopg's message spans lines; the CLI prints one
        raise ServiceUnavailable(
            f"cannot reach PostgreSQL at {redacted_dsn(dsn)}: {reason}. Check the DSN and that the server is up."
        ) from exc
    except MigrationError as exc:
        raise ConfigurationError(str(exc)) from exc
    click.echo(f"applied {', '.join(applied)}" if applied else "schema is up to date")


def _attach_simulator() -> None:
    # The simulator keeps its own click command (it is also `python -m legacy_db.simulate`);
    # mounting that object keeps one definition of its options.
    from legacy_db.simulate import main as simulate_command

    legacy.add_command(simulate_command, name="simulate")


_attach_simulator()
cli.add_command(mappings_group)
cli.add_command(contracts_group)
cli.add_command(check_command)
cli.add_command(backfill_command)
cli.add_command(tail_command)
cli.add_command(log_group)
cli.add_command(demo_command)


def main() -> None:
    note_secrets_of_invocation(sys.argv[1:])
    try:
        outcome = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        shown = io.StringIO()
        exc.show(file=shown)
        click.echo(scrub(shown.getvalue()), err=True, nl=False)
        sys.exit(exc.exit_code)
    except BridgeError as exc:
        click.echo(scrub(f"cdc-bridge: {exc}"), err=True)
        sys.exit(exc.exit_code)
    except Exception:  # a bug: its traceback helps, a password in it would not
        click.echo(scrub(traceback.format_exc()), err=True, nl=False)
        sys.exit(1)
    # Without standalone mode click returns a command's exit code (from ctx.exit) instead of exiting.
    sys.exit(outcome if isinstance(outcome, int) else 0)


if __name__ == "__main__":
    main()
