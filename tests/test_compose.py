"""docker-compose.yml is valid Compose and agrees with the repository, checked without a Docker engine.

The file is validated, after interpolation with its defaults (as ``docker compose config`` does), against the
Compose Specification's own JSON schema, kept in tests/data/compose-spec.json (source and licence in
compose-spec.json.license). The other tests check what the schema cannot see: that mounted files exist, that
the variables the service reads are stocktrace settings, that hosts and ports line up, and that Grafana's
provisioning reads what is mounted.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from stocktrace import cli
from stocktrace.app import create_app
from stocktrace.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).parent / "data" / "compose-spec.json"
DOCKERFILE = ROOT / "Dockerfile"

# Compose interpolation (compose-spec 12-interpolation.md), the forms this file uses: $$ is a literal $,
# ${NAME} the variable, ${NAME:-default} / ${NAME-default} the variable or a default.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}|(?P<other>.|$))"
)

# Commands that docker-compose.yml runs ahead of the work that adds them to the CLI.
_PENDING_COMMANDS: dict[str, str] = {}


def interpolate(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["name"] is None:
            pytest.fail(f"unsupported interpolation {match[0]!r} in {text!r}")
        value = env.get(match["name"])
        if match["op"] == ":-" and not value:
            return match["default"]
        if match["op"] == "-" and value is None:
            return match["default"]
        return value or ""

    return _VARIABLE.sub(replace, text)


def strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML document (comments are gone by then, as they are for Compose)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict | list):
        for value in node.values() if isinstance(node, dict) else node:
            yield from strings(value)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(value, env) for value in node]
    return node


RAW: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
# What `docker compose up` sees on a machine with no .env and none of the variables set.
COMPOSE: dict[str, Any] = interpolated(RAW, {})
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def schema_errors(document: object) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    # The schema declares draft 07 by a URI jsonschema does not map ("...draft-07/schema", without "#").
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def bind_mounts(service: str) -> Iterator[tuple[Path, PurePosixPath]]:
    """(host path, container path) of each bind mount; named volumes are skipped."""
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield (ROOT / source).resolve(), PurePosixPath(target)


def host_path(service: str, container_path: str) -> Path | None:
    """Where a path inside the service's container comes from in the repository, through its bind mounts."""
    wanted = PurePosixPath(container_path)
    mounts = [(host, target) for host, target in bind_mounts(service) if wanted.is_relative_to(target)]
    if not mounts:
        return None
    host, target = max(mounts, key=lambda mount: len(mount[1].parts))
    return host.joinpath(*wanted.relative_to(target).parts)


def built_here(service: str) -> bool:
    return "build" in SERVICES[service]


def dockerfile_instruction(name: str) -> list[str]:
    """The arguments of each ``name`` instruction in the Dockerfile, continuation lines joined."""
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    return [line.split(None, 1)[1] for line in lines if line.startswith(f"{name} ")]


def found(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{pattern} not found"
    return match


def cli_invocations(service: str) -> list[list[str]]:
    """The ``stocktrace`` argument lists a service built from the Dockerfile runs."""
    entrypoint = SERVICES[service].get("entrypoint")
    if entrypoint is None:
        command = SERVICES[service].get("command") or json.loads(dockerfile_instruction("CMD")[0])
        return [list(command)]
    assert entrypoint[:2] == ["sh", "-c"], "an entrypoint override is expected to be a sh -c script"
    steps = [shlex.split(step.strip().removeprefix("exec ")) for step in entrypoint[2].split("&&")]
    assert all(step[0] == "stocktrace" for step in steps), steps
    return [step[1:] for step in steps]


# The schema


def test_compose_file_follows_the_compose_specification() -> None:
    assert schema_errors(COMPOSE) == []


def test_the_schema_catches_a_misspelt_key() -> None:
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["stocktrace"]["restrat"] = "always"
    assert any("restrat" in error for error in schema_errors(broken))


def test_every_variable_has_a_default() -> None:
    # `docker compose up` must work on a fresh checkout, without a .env file.
    for match in (match for text in strings(RAW) for match in _VARIABLE.finditer(text)):
        if not match["escaped"]:
            assert match["op"] == ":-", f"{match[0]} needs a ${{NAME:-default}} form"


# What the file names exists


@pytest.mark.parametrize("service", [name for name in SERVICES if built_here(name)])
def test_build_context_holds_the_dockerfile(service: str) -> None:
    build = SERVICES[service]["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    assert (context / "Dockerfile").is_file()


@pytest.mark.parametrize("service", list(SERVICES))
def test_volumes_exist(service: str) -> None:
    for volume in SERVICES[service].get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith((".", "/")):
            assert (ROOT / source).exists(), f"{service} mounts {source}, which is not in the repository"
        else:
            assert source in COMPOSE.get("volumes", {}), f"{service} uses volume {source}, declared nowhere"


@pytest.mark.parametrize("service", list(SERVICES))
def test_dependencies_are_services_and_health_is_checked(service: str) -> None:
    for dependency, spec in SERVICES[service].get("depends_on", {}).items():
        assert dependency in SERVICES
        if spec["condition"] == "service_healthy":
            assert "healthcheck" in SERVICES[dependency], f"{service} waits for {dependency} to be healthy"


@pytest.mark.parametrize("service", ["timescaledb", "stocktrace"])
def test_healthcheck_present(service: str) -> None:
    assert SERVICES[service]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")


def test_stocktrace_starts_once_the_database_is_healthy() -> None:
    assert SERVICES["stocktrace"]["depends_on"]["timescaledb"] == {"condition": "service_healthy"}


# stocktrace's own configuration


def stocktrace_settings(service: str) -> Settings:
    """The settings the service's container starts with: the image's ENV, then the service's environment."""
    image_env = dict(
        pair.split("=", 1) for line in dockerfile_instruction("ENV") for pair in shlex.split(line)
    )
    env = {key: value for key, value in image_env.items() if key.startswith("STOCKTRACE_")} | environment(
        service
    )
    return Settings.model_validate(
        {key.removeprefix("STOCKTRACE_").lower(): value for key, value in env.items()}
    )


@pytest.mark.parametrize("service", [name for name in SERVICES if built_here(name)])
def test_environment_names_are_settings(service: str) -> None:
    for key in environment(service):
        assert key.startswith("STOCKTRACE_"), f"{service} sets {key}, which stocktrace does not read"
        assert key.removeprefix("STOCKTRACE_").lower() in Settings.model_fields, f"{key} is not a setting"
    stocktrace_settings(service)  # and the values validate


def test_database_url_reaches_the_timescaledb_service() -> None:
    url = urlsplit(stocktrace_settings("stocktrace").database_url)
    database = environment("timescaledb")
    assert (url.hostname, url.port) == ("timescaledb", 5432)
    assert (url.username, url.password) == (database["POSTGRES_USER"], database["POSTGRES_PASSWORD"])
    assert url.path == f"/{database['POSTGRES_DB']}"


def test_mqtt_urls_reach_the_broker_on_its_listener() -> None:
    conf = (ROOT / "stocktrace/setup/mosquitto-docker.conf").read_text()
    listener = int(found(r"^listener (\d+)", conf)[1])
    simulator = cli_invocations("simulator")[0]
    for url in (stocktrace_settings("stocktrace").mqtt_url, simulator[simulator.index("--mqtt-url") + 1]):
        assert (urlsplit(url).hostname, urlsplit(url).port) == ("mosquitto", listener)
    assert f"{listener}:{listener}" in SERVICES["mosquitto"]["ports"]


def test_broker_loads_stocktrace_settings() -> None:
    main = host_path("mosquitto", "/mosquitto/config/mosquitto.conf")
    assert main == ROOT / "stocktrace/setup/mosquitto-docker.conf"
    include_dir = PurePosixPath(found(r"^include_dir (\S+)", main.read_text())[1])
    included = [host for host, target in bind_mounts("mosquitto") if target.parent == include_dir]
    assert ROOT / "stocktrace/setup/mosquitto.conf" in included


def test_api_is_published_and_health_checked() -> None:
    settings = stocktrace_settings("stocktrace")
    assert settings.api_host == "0.0.0.0", "an API on 127.0.0.1 cannot be reached through a published port"
    assert f"{settings.api_port}:{settings.api_port}" in SERVICES["stocktrace"]["ports"]
    url = urlsplit(found(r"http://[^'\"\s]+", " ".join(SERVICES["stocktrace"]["healthcheck"]["test"]))[0])
    assert url.port == settings.api_port
    assert url.path in {getattr(route, "path", None) for route in create_app(settings).routes}


def test_dockerfile_runs_the_project_script() -> None:
    assert dockerfile_instruction("FROM") == ["python:3.11-slim"]
    assert json.loads(dockerfile_instruction("ENTRYPOINT")[0]) == ["stocktrace"]
    assert dockerfile_instruction("USER"), "the image must not run as root"


def _invocations() -> Iterator[Any]:
    for service in (name for name in SERVICES if built_here(name)):
        for args in cli_invocations(service):
            pending = _PENDING_COMMANDS.get(args[0])
            marks = [pytest.mark.xfail(reason=pending, strict=True)] if pending else []
            yield pytest.param(args, id=f"{service}:{args[0]}", marks=marks)


@pytest.mark.parametrize("args", list(_invocations()))
def test_commands_are_stocktrace_commands(args: list[str]) -> None:
    # Parses the arguments as `stocktrace` would, without running the command.
    group = cli.main.make_context("stocktrace", [], resilient_parsing=True)
    name, command, rest = cli.main.resolve_command(group, args)
    assert command is not None
    assert name is not None
    command.make_context(name, rest, parent=group)


# Grafana


def provisioning(kind: str) -> dict[str, Any]:
    path = host_path("grafana", f"/etc/grafana/provisioning/{kind}/stocktrace.yaml")
    assert path is not None, f"{kind} provisioning is not mounted into Grafana"
    assert path.is_file()
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    assert document["apiVersion"] == 1
    return document


def test_datasource_is_the_timescaledb_database() -> None:
    (source,) = provisioning("datasources")["datasources"]
    assert (source["uid"], source["type"]) == ("stocktrace", "postgres")
    assert source["jsonData"]["timescaledb"] is True
    host, port = source["url"].split(":")
    assert host in SERVICES
    assert port == "5432"
    assert "timescaledb" in SERVICES["grafana"]["depends_on"]


def test_datasource_credentials_are_the_database_ones() -> None:
    # Grafana substitutes ${NAME} from its own environment, which must hold the database's account.
    (source,) = provisioning("datasources")["datasources"]
    names = {name for text in strings(source) for name in re.findall(r"\$\{(\w+)\}", text)}
    assert names, "the data source takes its credentials from the environment"
    grafana, database = environment("grafana"), environment("timescaledb")
    for name in names:
        assert grafana.get(name) == database[name], f"Grafana's {name} differs from the database's"


def test_dashboard_provider_reads_a_mounted_folder() -> None:
    (provider,) = provisioning("dashboards")["providers"]
    assert (provider["type"], provider["folder"]) == ("file", "stocktrace")
    folder = host_path("grafana", provider["options"]["path"])
    # dashboards/json/ holds the exported dashboards; the export creates it, so only the mount must exist.
    assert folder == ROOT / "dashboards" / "json"
    assert folder.parent.is_dir()
