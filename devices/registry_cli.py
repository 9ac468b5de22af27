"""Commands over the device registry: ``stocktrace apply`` and ``stocktrace devices list|show|mosquitto``."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import psycopg
import yaml

from devices import health, manifest, mosquitto, registry
from devices.options import database_option
from devices.registry import DeviceKind, Plan

T = TypeVar("T")


@contextmanager
def _connection(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(database_url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot connect to {database_url}: {exc}".strip()) from None
    with conn:
        yield conn


def _run(database_url: str, plan: Plan[T]) -> T:
    with _connection(database_url) as conn:
        try:
            return registry.run(conn, plan)
        except psycopg.errors.UndefinedTable:
            raise click.ClickException("the registry tables are missing: run `stocktrace migrate` first") from None
        except registry.RegistryError as exc:
            raise click.ClickException(exc.message) from None


@click.command("apply")
@click.option("-f", "--filename", "source", type=click.File("r"), required=True, help="Manifest file, or - for stdin")
@click.option("--dry-run", is_flag=True, help="Report what would change and change nothing")
@click.option("--prune", is_flag=True, help="Also delete sites, locations and devices the file does not declare")
@database_option
def apply_command(source: IO[str], dry_run: bool, prune: bool, database_url: str) -> None:
    """Make the device registry match a manifest: create and update sites, locations and devices.

    Each object is reported as created, updated (with the fields that changed) or unchanged; applying the
    same file again changes nothing. Objects the file does not mention are left alone unless --prune is given.
    Their readings are never deleted. The file applies in one transaction, or not at all.

    \b
    Example:
      stocktrace apply -f devices/examples/site.yaml --dry-run
    """
    name = getattr(source, "name", "-")
    try:
        document = manifest.parse(source.read())
        with _connection(database_url) as conn, conn.transaction() as tx:
            changes = registry.run(conn, manifest.apply(document, prune=prune))
            for change in changes:
                click.echo(str(change))
            if dry_run:
                raise psycopg.Rollback(tx)
    except manifest.ManifestError as exc:
        count = len(exc.problems)
        lines = "\n".join(f"  {problem}" for problem in exc.problems)
        raise click.ClickException(f"{name}: {count} problem{'s' * (count != 1)}:\n{lines}") from None
    except psycopg.errors.UndefinedTable:
        raise click.ClickException("the registry tables are missing: run `stocktrace migrate` first") from None
    click.echo(manifest.summarize(changes) + (" (dry run: nothing was changed)" if dry_run else ""))


@click.group("devices")
def devices_group() -> None:
    """The devices in the registry and on the broker, and their broker credentials."""


@devices_group.command("list")
@click.option(
    "--status",
    type=click.Choice(["online", "offline", "never_seen", "unassigned"]),
    help="Only devices in this state; unassigned: publishing but not registered, or parked",
)
@click.option("--kind", type=click.Choice([kind.value for kind in DeviceKind]))
@database_option
def list_command(status: health.StatusFilter | None, kind: str | None, database_url: str) -> None:
    """List registered and publishing devices with their state.

    \b
    Example: adopt what has started publishing
      stocktrace devices list --status unassigned
    """
    states = _run(database_url, health.list_device_states(status, DeviceKind(kind) if kind else None))
    rows = [("ID", "STATUS", "KIND", "SOURCE", "LOCATION", "LAST SEEN", "LAST TOPIC")]
    for state in states:
        seen = f"{state.last_seen_at:%Y-%m-%d %H:%M:%S}" if state.last_seen_at else "-"
        status_text = state.status.value + ("" if state.assigned else " (unassigned)")
        rows.append(
            (state.id, status_text, state.kind or "-", state.source or "-", state.location or "-", seen,
             state.last_topic or "-")
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@devices_group.command("show")
@click.argument("device_id")
@database_option
def show_command(device_id: str, database_url: str) -> None:
    """Show a device's registry entry, decoder options included, as a manifest would declare it.

    \b
    Example: see which field names a LoRaWAN sensor's readings are taken from
      stocktrace devices show freezer-probe-1
    """
    device = _run(database_url, registry.get_device(device_id))
    entry = device.model_dump(mode="json")
    # Leave out what is unset, as a manifest would; mqtt: null (does not connect itself) is a statement.
    if entry["mqtt"] is not None:
        entry["mqtt"] = {key: value for key, value in entry["mqtt"].items() if value is not None}
    if entry["decoder_options"] is not None:
        entry["decoder_options"] = _sorted(entry["decoder_options"])  # jsonb keeps no order of its own
    shown = {key: value for key, value in entry.items() if key == "mqtt" or value not in (None, [])}
    click.echo(yaml.safe_dump([shown], sort_keys=False, allow_unicode=True), nl=False)


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    return value


def _user_password(_: click.Context, __: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    supplied = {}
    for value in values:
        user, sep, password = value.partition("=")
        if not sep or not user or not password:
            raise click.BadParameter(f"{value.split('=')[0]!r}...: expected USER=PASSWORD")
        supplied[user] = password
    return supplied


@devices_group.command("mosquitto")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--acl-file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--service-user", envvar="STOCKTRACE_MQTT_USERNAME", default="stocktrace", show_default=True,
    help="The user stocktrace consumes as; may read every topic [env: STOCKTRACE_MQTT_USERNAME]",
)  # fmt: skip
@click.option(
    "--service-password", envvar="STOCKTRACE_MQTT_PASSWORD",
    help="Set the service user's password [env: STOCKTRACE_MQTT_PASSWORD]",
)  # fmt: skip
@click.option(
    "--password", "passwords", multiple=True, callback=_user_password, metavar="USER=PASSWORD",
    help="Set a device's password instead of generating one (repeatable)",
)  # fmt: skip
@click.option("--rotate", multiple=True, metavar="USER", help="Issue a new password for this user (repeatable)")
@database_option
def mosquitto_command(
    password_file: Path,
    acl_file: Path,
    service_user: str,
    service_password: str | None,
    passwords: dict[str, str],
    rotate: tuple[str, ...],
    database_url: str,
) -> None:
    """Write Mosquitto's password and ACL files from the registry: each device may publish only on its topics.

    Users already in the password file keep their password; new users get a generated one, printed once
    here as USER<TAB>PASSWORD lines on stdout (only the hash is stored). Users no longer in the registry are
    removed. Then reload the broker: kill -HUP $(pidof mosquitto).

    \b
    Broker configuration (mosquitto.conf):
      allow_anonymous false
      password_file /etc/mosquitto/stocktrace.passwd
      acl_file /etc/mosquitto/stocktrace.acl
    """
    devices = _run(database_url, registry.list_devices())
    try:
        all_clients = mosquitto.clients(devices, service_user)
    except mosquitto.AclError as exc:
        raise click.ClickException(str(exc)) from None
    supplied = passwords | ({service_user: service_password} if service_password else {})
    current = mosquitto.parse_password_file(password_file.read_text()) if password_file.exists() else {}
    issued = mosquitto.credentials(all_clients, current, supplied, rotate)
    _write_private(password_file, mosquitto.render_password_file(issued.hashes))
    _write_private(acl_file, mosquitto.render_acl(all_clients))
    for user, password in issued.issued.items():
        click.echo(f"{user}\t{password}")
    click.echo(
        f"{password_file}: {len(issued.hashes)} users, {len(issued.issued)} new passwords (shown above, once)"
        + (f", removed {', '.join(issued.removed)}" if issued.removed else "")
        + f"\n{acl_file}: {len(all_clients) - 1} devices\nreload the broker: kill -HUP $(pidof mosquitto)",
        err=True,
    )


def _write_private(path: Path, text: str) -> None:
    """Replace the file in one step, keeping its mode (a new one: owner read-write, group read)."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o640
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


COMMANDS: list[click.Command] = [apply_command, devices_group]
