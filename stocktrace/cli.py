"""The ``stocktrace`` command line."""

from __future__ import annotations

import logging
import sys

import click

from devices import cli as devices_cli
from stocktrace import db
from stocktrace.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="stocktrace")
def main() -> None:
    """stocktrace: where every tagged item is, what condition it is in, and what needs attention now.

    \b
    Start here:
      stocktrace demo              run the service with devices publishing to it
      stocktrace migrate           create or upgrade the database schema
      stocktrace run --workers 2   consume MQTT into TimescaleDB and serve the API
      stocktrace bench ingest      measure the ingest path against baselines

    Configuration comes from STOCKTRACE_* environment variables; see the README.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (safe to run again).

    \b
    Example:
      STOCKTRACE_DATABASE_URL=postgresql://db/stocktrace stocktrace migrate
    """
    settings = _settings()
    try:
        applied = db.migrate(settings.database_url)
    except Exception as exc:
        raise click.ClickException(
            f"cannot migrate {settings.database_url}: {exc}\n"
            "Is PostgreSQL running with TimescaleDB? `make demo` sets both up on Debian."
        ) from None
    if applied:
        click.echo(f"applied {len(applied)} migration(s): " + ", ".join(f"{m.version}_{m.name}" for m in applied))
    else:
        click.echo("schema is up to date")


@main.group()
def bench() -> None:
    """Benchmarks of the hot paths, each against a baseline measured in the same run."""


for _command in devices_cli.COMMANDS:
    main.add_command(_command)
for _command in devices_cli.BENCHMARKS:
    bench.add_command(_command)


if __name__ == "__main__":
    sys.exit(main())
