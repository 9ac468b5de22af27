"""Property-based fuzzing of the whole API against its own OpenAPI document (schemathesis).

For every operation, schemathesis sends requests generated from the document (valid ones, and invalid ones
that the API must refuse with a 4xx), as an admin, into the real app on the real database, which holds the
example site so that generated requests also meet existing objects. Every answer must be free of server
errors and match the schema the document gives for its status code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from devices.manifest import apply, parse
from devices.registry import run
from stocktrace.app import create_app
from stocktrace.settings import load_settings

EXAMPLE_SITE = Path(__file__).parents[2] / "devices" / "examples" / "site.yaml"
# About 60 operations on this 2-core machine: enough to find what a fuzzer finds in a minute.
EXAMPLES_PER_OPERATION = 40


@pytest.fixture
def app(dsn: str, db: psycopg.Connection[Any]) -> FastAPI:
    run(db, apply(parse(EXAMPLE_SITE.read_text())))
    return create_app(load_settings(database_url=dsn))


def _send(client: TestClient, case: Any, headers: dict[str, str]) -> Any:
    """The case as a request into the app in this process.

    schemathesis's own ASGI transport goes through `requests` and urllib3, which urllib3-future (installed
    for grafana-client) replaces; so the request is prepared by `requests`, which only encodes it, and sent
    through Starlette's test client.
    """
    prepared = requests.Request(**case.as_transport_kwargs(base_url="http://testserver", headers=headers)).prepare()
    body = prepared.body
    assert body is None or isinstance(body, str | bytes)
    headers = {name: str(value) for name, value in prepared.headers.items()}
    return client.request(prepared.method or "GET", prepared.url or "/", headers=headers, content=body)


def _fuzz(client: TestClient, operation: Any, headers: dict[str, str]) -> list[str]:
    """Examples from the document, then valid and invalid requests generated from it; the failures found.

    A failure is recorded rather than raised: the API keeps state, so replaying a failing request (as
    Hypothesis does to confirm it) meets another database and may pass, which would hide the failure.
    """
    strategies = [
        *operation.schema.get_strategies_from_examples(operation),
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    failures: list[str] = []

    @given(case=st.one_of(strategies))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def holds(case: Any) -> None:
        response = _send(client, case, headers)
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except Exception as exc:  # schemathesis raises a group of its check failures
            failures.append(f"{exc}\n{case.as_curl_command()}")

    holds()
    return failures


def test_every_operation_keeps_its_contract(app: FastAPI, admin: dict[str, str]) -> None:
    failed = []
    with TestClient(app) as client:
        api_schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
        # The API's operations; /readyz, /healthz and /metrics are the operators' and answer 503 by design.
        operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]  # an invalid document fails here
        assert len(operations) > 40
        for operation in (o for o in operations if o.path.startswith("/api/v1/")):
            failed += [f"{operation.label}: {failure}" for failure in _fuzz(client, operation, admin)[:1]]
    assert not failed, "\n\n".join(failed)
