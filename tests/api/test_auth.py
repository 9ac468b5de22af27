"""API keys: stored hashed, shown once, revocable; each route needs its role; probes and docs stay open."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from stocktrace.app import create_app
from stocktrace.auth import RULES, Role, keys, replace_key, required_role
from stocktrace.settings import load_settings

SITE = {"id": "dc-1", "name": "Berlin DC", "timezone": "Europe/Berlin"}
BOOK = "gtin,location_id,quantity\n09506000134352,dc-1,3\n"


def test_no_key_or_a_wrong_one_is_refused_with_a_challenge(client, admin) -> None:
    for headers in ({}, {"Authorization": "Bearer stk_000000000000_nope"}, {"X-API-Key": "nonsense"}):
        response = client.get("/api/v1/sites", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="stocktrace"'
        assert response.headers["content-type"] == "application/problem+json"


def test_a_key_with_its_secret_altered_is_refused(client, admin) -> None:
    key = admin["Authorization"].removeprefix("Bearer ")
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert client.get("/api/v1/sites", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert client.get("/api/v1/sites", headers=admin).status_code == 200


def test_the_key_is_accepted_in_either_header(client, admin) -> None:
    key = admin["Authorization"].removeprefix("Bearer ")
    assert client.get("/api/v1/sites", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/api/v1/sites", headers={"authorization": f"bearer {key}"}).status_code == 200


def test_probes_metrics_and_docs_are_open(client) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path


def test_each_role_reaches_what_it_should(client, key_of, db) -> None:
    viewer, operator, admin = key_of(Role.VIEWER), key_of(Role.OPERATOR), key_of(Role.ADMIN)
    assert client.put("/api/v1/sites/dc-1", json=SITE, headers=viewer).status_code == 403
    assert client.put("/api/v1/sites/dc-1", json=SITE, headers=operator).status_code == 403
    assert client.put("/api/v1/sites/dc-1", json=SITE, headers=admin).status_code == 201
    assert client.get("/api/v1/sites/dc-1", headers=viewer).json()["name"] == "Berlin DC"

    def import_book(headers: dict[str, str]) -> Any:
        return client.post("/api/v1/inventory/book", content=BOOK, headers={**headers, "content-type": "text/csv"})

    refused = import_book(viewer)
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        "POST /api/v1/inventory/book needs the operator role; the key 'test-viewer' is viewer"
    )
    assert import_book(operator).status_code == 201
    assert client.get("/api/v1/audit", headers=operator).status_code == 403
    assert client.get("/api/v1/audit", headers=admin).status_code == 200


def test_a_role_check_does_not_depend_on_the_ids_in_the_path(client, key_of) -> None:
    operator = key_of(Role.OPERATOR)
    # A device id may contain '/', and still names one route: the role comes from its template.
    response = client.put("/api/v1/devices/site/a/reader-1", json={}, headers=operator)
    assert response.status_code == 403
    assert "PUT /api/v1/devices/{device_id} needs the admin role" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "template", "role"),
    [
        ("GET", "/api/v1/devices/{device_id}", Role.VIEWER),
        ("GET", "/api/v1/audit", Role.ADMIN),
        ("GET", "/api/v1/keys", Role.ADMIN),
        ("POST", "/api/v1/inventory/book", Role.OPERATOR),
        ("POST", "/api/v1/inventory/cycle-counts/{count_id}/finish", Role.OPERATOR),
        ("PUT", "/api/v1/items/{epc}/lot", Role.OPERATOR),
        ("POST", "/api/v1/silences", Role.OPERATOR),
        ("PUT", "/api/v1/skus/{gtin}", Role.ADMIN),
        ("DELETE", "/api/v1/locations/{location_id}", Role.ADMIN),
        ("POST", "/api/v1/something-new", Role.ADMIN),
    ],
)
def test_the_route_table(method, template, role) -> None:
    assert required_role(method, template) is role


def test_every_write_rule_is_reachable() -> None:
    """No rule is shadowed by an earlier, broader one (first match wins)."""
    for index, rule in enumerate(RULES):
        earlier = RULES[:index]
        method = sorted(rule.methods)[0]
        shadowed = [r for r in earlier if r.covers(method, rule.path) and r.methods >= rule.methods]
        assert not shadowed, f"{rule} is hidden by {shadowed[0]}"


def test_a_revoked_key_is_refused_at_once(client, key_of) -> None:
    admin = key_of(Role.ADMIN, "alice")
    viewer = key_of(Role.VIEWER, "bob")
    listed = client.get("/api/v1/keys", headers=admin).json()
    [bob] = [key for key in listed if key["name"] == "bob"]
    assert "key" not in bob
    assert "secret_sha256" not in bob
    assert client.get("/api/v1/sites", headers=viewer).status_code == 200
    assert client.delete(f"/api/v1/keys/{bob['id']}", headers=admin).status_code == 204
    assert client.get("/api/v1/sites", headers=viewer).status_code == 401
    assert client.delete(f"/api/v1/keys/{bob['id']}", headers=admin).status_code == 404


def test_a_key_issued_over_the_api_works_and_its_name_is_unique_while_in_force(client, admin) -> None:
    issued = client.post("/api/v1/keys", json={"name": "scanner-7", "role": "operator"}, headers=admin)
    assert issued.status_code == 201
    key = issued.json()["key"]
    assert key.startswith(f"stk_{issued.json()['id']}_")
    assert client.get("/api/v1/sites", headers={"X-API-Key": key}).status_code == 200
    again = client.post("/api/v1/keys", json={"name": "scanner-7", "role": "viewer"}, headers=admin)
    assert again.status_code == 409


def test_the_cli_prints_the_key_once_and_stores_only_its_hash(dsn, db) -> None:
    runner = CliRunner()
    created = runner.invoke(keys, ["create", "--role", "admin", "--name", "ops", "--database-url", dsn])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    key_id = key.split("_")[1]
    stored = db.execute("select role, secret_sha256 from api_keys where id = %s", (key_id,)).fetchone()
    assert stored == ("admin", hashlib.sha256(key.encode()).digest())

    listed = runner.invoke(keys, ["list", "--database-url", dsn])
    assert key_id in listed.stdout
    assert "ops" in listed.stdout
    assert key not in listed.stdout

    assert runner.invoke(keys, ["revoke", "ops", "--database-url", dsn]).exit_code == 0
    assert "ops" not in runner.invoke(keys, ["list", "--database-url", dsn]).stdout
    missing = runner.invoke(keys, ["revoke", "ops", "--database-url", dsn])
    assert missing.exit_code == 1
    assert "no key in force" in missing.output


def test_the_cli_refuses_a_duplicate_name(dsn, db) -> None:
    runner = CliRunner()
    assert runner.invoke(keys, ["create", "--role", "viewer", "--name", "ops", "--database-url", dsn]).exit_code == 0
    again = runner.invoke(keys, ["create", "--role", "viewer", "--name", "ops", "--database-url", dsn])
    assert again.exit_code == 1
    assert "a key named 'ops' exists" in again.output


def test_authentication_can_be_turned_off_for_a_demo_and_changes_are_still_attributed(dsn, db) -> None:
    with TestClient(create_app(load_settings(database_url=dsn, api_auth=False))) as client:
        assert client.put("/api/v1/sites/dc-1", json=SITE).status_code == 201
    assert db.execute("select actor from audit_log where table_name = 'locations'").fetchone() == ("anonymous",)


def test_metrics_can_be_put_behind_a_key(dsn, db, key_of) -> None:
    viewer = key_of(Role.VIEWER)
    with TestClient(create_app(load_settings(database_url=dsn, metrics_auth=True))) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=viewer).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_a_key_can_be_replaced_by_name(client, db) -> None:
    first = replace_key(db, "demo", Role.ADMIN)
    second = replace_key(db, "demo", Role.ADMIN)
    assert client.get("/api/v1/sites", headers={"X-API-Key": first.key}).status_code == 401
    assert client.get("/api/v1/sites", headers={"X-API-Key": second.key}).status_code == 200
