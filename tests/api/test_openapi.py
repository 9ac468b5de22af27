"""The OpenAPI document is valid, says how to authenticate, and describes errors and bodies with examples."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from stocktrace.app import create_app
from stocktrace.auth import OPEN_PATHS
from stocktrace.settings import load_settings

METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(load_settings()).openapi()


def _operations(spec: dict[str, Any]):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def test_the_document_is_valid_openapi(spec) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.1")


def test_it_documents_keys_roles_errors_and_pages(spec) -> None:
    description = spec["info"]["description"]
    for needle in ("Authorization: Bearer", "application/problem+json", "before_id", "nextPageToken", "413"):
        assert needle in description
    assert {"bearerKey", "headerKey"} <= spec["components"]["securitySchemes"].keys()


def test_every_api_operation_states_its_role_and_its_error_responses(spec) -> None:
    for path, method, operation in _operations(spec):
        label = f"{method.upper()} {path}"
        if path in OPEN_PATHS:
            assert operation["security"] == [], label
            continue
        assert operation.get("summary"), f"{label} has no summary"
        assert operation["x-required-role"] in {"viewer", "operator", "admin"}, label
        responses = operation["responses"]
        for status in ("401", "403", "4XX", "5XX"):
            assert "application/problem+json" in responses[status]["content"], f"{label} {status}"
        if "requestBody" in operation or "parameters" in operation:
            ref = responses["422"]["content"]["application/problem+json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ValidationProblem", label


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def _body_examples(spec, operation) -> list[tuple[dict[str, Any], Any]]:
    found = []
    for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
        if media_type == "multipart/form-data":
            continue  # a file upload
        schema = content["schema"]
        examples = [content["example"]] if "example" in content else _resolve(spec, schema).get("examples", [])
        if "items" in schema and "example" not in content:
            examples = [[example] for example in examples]
        assert examples, f"no example for {media_type}"
        found += [(schema, example) for example in examples]
    return found


def test_every_request_body_and_path_parameter_has_an_example_that_fits_its_schema(spec) -> None:
    for path, method, operation in _operations(spec):
        for schema, example in _body_examples(spec, operation):
            jsonschema.validate(example, {**schema, "components": spec["components"]})
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                has = "example" in parameter or "examples" in parameter or "examples" in parameter["schema"]
                assert has, f"{method.upper()} {path}: path parameter {parameter['name']} has no example"


def test_the_problem_examples_fit_their_schemas(spec) -> None:
    for name in ("Problem", "ValidationProblem"):
        schema = spec["components"]["schemas"][name]
        for example in schema["examples"]:
            jsonschema.validate(example, {**schema, "components": spec["components"]})
