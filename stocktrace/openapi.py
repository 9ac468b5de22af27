"""The OpenAPI document: FastAPI's, plus what the application glue adds to every operation.

Security schemes and each operation's least role (from auth.RULES), and the problem+json error responses
(problems.py) in place of FastAPI's default 422, so that the document describes what the API really answers.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

import devices
from devices.manifest import ManifestError, Objects, parse
from stocktrace.auth import API_PREFIX, OPEN_PATHS, required_role
from stocktrace.problems import MEDIA_TYPE, InvalidField, Problem, ValidationProblem

_SCHEMES: Final = {
    "bearerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `stocktrace keys create`, as `Authorization: Bearer stk_…`",
    },
    "headerKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key, as X-API-Key"},
}
_METHODS: Final = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})
EXAMPLE_SITE: Final = Path(devices.__file__).parent / "examples" / "site.yaml"
# Path parameters of the example site's objects (devices/examples/site.yaml), where a router gives none.
_PATH_EXAMPLES: Final[dict[str, Any]] = {
    "site_id": "dc-north",
    "location_id": "cold-1",
    "device_id": "fx9600-dock1",
    "port": 1,
    "epc": "3034F4E4E40002C000000001",
    "lot": "L-88",
    "count_id": 1,
    "silence_id": 1,
    "delivery_id": 1,
}


def describe(max_body_bytes: int) -> str:
    """The document's description: how to authenticate, what errors look like, how lists are paged."""
    return f"""\
stocktrace's HTTP API: the device registry, ingest, items and where they are, inventory against the book,
conditions, EPCIS events, alerts and the audit log.

## Authentication

Every path under `/api/v1` needs an API key, sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
Create the first one on the server with `stocktrace keys create --role admin --name NAME` (it is shown once);
admins can issue more through `POST /api/v1/keys`. Roles are ordered:

- **viewer** reads everything but the audit log and the keys;
- **operator** also imports the book, runs cycle counts, packs containers, assigns lots, acknowledges and
  silences alerts;
- **admin** also changes the registry, SKUs, lots, rules and keys, and reads the audit log.

Each operation states the least role it needs (and `x-required-role`). `/healthz`, `/readyz`, `/metrics` and
this documentation are open. Every change is recorded with the key's name in the audit log (`GET /api/v1/audit`).

## Errors

Every error is `application/problem+json` (RFC 9457): `type`, `title`, `status`, `detail`, `instance`, and
`request_id`, which is also the `X-Request-ID` response header: quote it when reporting a problem. Invalid input
is 422 with `errors`, one entry per invalid field: where (`loc`, and `pointer` into the body) and what is wrong
(`detail`). A request body over {max_body_bytes} bytes is refused with 413 before it is read.

## Pages

Lists that can grow without bound are paged by a `limit` and a cursor taken from the page you have; a page
shorter than `limit`, or a null cursor, is the last:

- `before_id`: the smallest `id` on the page (dead letters, the audit log), newest first;
- `before`: the page's `next_before` (an item's history), newest first;
- `after`: the page's `next_after` (the items at a location), by EPC;
- EPCIS events follow the EPCIS 2.0 REST binding: `perPage` and `nextPageToken`, with the next page linked in a
  `Link: <…>; rel="next"` header.
"""


def document(app: FastAPI, open_paths: frozenset[str] = OPEN_PATHS) -> dict[str, Any]:
    """The OpenAPI document of ``app``, built once; ``open_paths`` need no key."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    components["securitySchemes"] = _SCHEMES
    components.setdefault("schemas", {}).update(_problem_schemas())
    for name, example in registry_examples().items():
        if name in components["schemas"]:
            components["schemas"][name].setdefault("examples", [example])
    schema["security"] = [{name: []} for name in _SCHEMES]
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method in _METHODS:
                _complete(path, method.upper(), operation, open_paths)
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    app.openapi_schema = schema
    return schema


@cache
def registry_examples() -> dict[str, Any]:
    """Examples of the registry's bodies, taken from the example site so that they are valid and consistent."""
    try:
        objects = Objects.of(parse(EXAMPLE_SITE.read_text()).manifest)
    except (OSError, ManifestError):
        return {}
    device = next(entry.obj for entry in objects.devices if entry.obj.antennas)
    location = next(entry.obj for entry in objects.locations if entry.obj.id == _PATH_EXAMPLES["location_id"])
    return {
        "Site": objects.sites[0].obj.model_dump(mode="json", exclude_none=True),
        "Location": location.model_dump(mode="json", exclude_none=True),
        "Device": device.model_dump(mode="json", exclude_none=True),
        "Antenna": device.antennas[0].model_dump(mode="json", exclude_none=True),
    }


def _problem_schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [(Problem, "serialization"), (ValidationProblem, "serialization"), (InvalidField, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = top["$defs"]
    return schemas


def _problem(description: str, model: str = "Problem") -> dict[str, Any]:
    return {"description": description, "content": {MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{model}"}}}}


def _complete(path: str, method: str, operation: dict[str, Any], open_paths: frozenset[str]) -> None:
    if path in open_paths:
        operation["security"] = []
        return
    if not path.startswith(API_PREFIX + "/"):
        # Outside the API (/metrics behind a key): any key will do.
        operation.setdefault("responses", {})["401"] = _problem("No API key, or one that is unknown or revoked")
        return
    role = required_role(method, path)
    operation["x-required-role"] = role.value
    for parameter in operation.get("parameters", []):
        example = _PATH_EXAMPLES.get(parameter["name"])
        if parameter["in"] == "path" and example is not None and "example" not in parameter:
            parameter.setdefault("examples", {"example": {"value": example}})
    needs = f"Needs the **{role}** role."
    operation["description"] = f"{operation['description']}\n\n{needs}" if operation.get("description") else needs
    responses = operation.setdefault("responses", {})
    documented_422 = responses.get("422", {}).get("description")
    if "parameters" in operation or "requestBody" in operation or "422" in responses:
        responses["422"] = _problem(documented_422 or "Invalid input: each invalid field", "ValidationProblem")
    if "requestBody" in operation:
        responses["413"] = _problem("The body is larger than the API accepts")
    responses["401"] = _problem("No API key, or one that is unknown or revoked")
    responses["403"] = _problem(f"The key's role is below {role}")
    responses.setdefault("4XX", _problem("Any other refusal: not found (404), conflicting state (409), ..."))
    responses.setdefault("5XX", _problem("The server failed (500) or the database is unavailable (503)"))
