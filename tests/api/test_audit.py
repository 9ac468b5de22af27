"""Every change is in the audit log with who made it, through which request, and the row before and after."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from stocktrace.audit import Actor, AuditedPool, acting
from stocktrace.auth import Role

SITE = {"id": "dc-1", "name": "Berlin DC", "timezone": "Europe/Berlin"}


def _entries(db: Any, table: str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = db.execute(
        "select actor, actor_key, request, operation, object_key, before ->> 'name', after ->> 'name'"
        " from audit_log where table_name = %s order by id",
        (table,),
    ).fetchall()
    return rows


def test_api_changes_are_recorded_with_the_key_request_and_rows(client, key_of, db) -> None:
    admin = key_of(Role.ADMIN, "alice")
    key_id = admin["Authorization"].split("_")[1]
    client.put("/api/v1/sites/dc-1", json=SITE, headers=admin)
    client.put("/api/v1/sites/dc-1", json={**SITE, "name": "Berlin North"}, headers=admin)
    client.put("/api/v1/sites/dc-1", json={**SITE, "name": "Berlin North"}, headers=admin)  # no change
    client.delete("/api/v1/sites/dc-1", headers=admin)
    assert _entries(db, "locations") == [
        ("alice", key_id, "PUT /api/v1/sites/dc-1", "insert", "dc-1", None, "Berlin DC"),
        ("alice", key_id, "PUT /api/v1/sites/dc-1", "update", "dc-1", "Berlin DC", "Berlin North"),
        ("alice", key_id, "DELETE /api/v1/sites/dc-1", "delete", "dc-1", "Berlin North", None),
    ]


def test_the_request_id_ties_an_entry_to_the_logs(client, admin, db) -> None:
    response = client.put("/api/v1/sites/dc-1", json=SITE, headers={**admin, "X-Request-ID": "ticket-4711"})
    assert response.headers["x-request-id"] == "ticket-4711"
    assert db.execute("select request_id from audit_log where table_name = 'locations'").fetchone() == ("ticket-4711",)


def test_changes_outside_the_api_name_the_database_user(db) -> None:
    db.execute("insert into skus (gtin, name) values ('09506000134352', 'Vaccine 10x')")
    [(actor, request)] = db.execute("select actor, request from audit_log where table_name = 'skus'").fetchall()
    assert actor == f"db:{db.info.user}"
    assert request is None


def test_only_people_assigned_lots_and_packing_through_the_api_are_audited(client, key_of, db) -> None:
    operator = key_of(Role.OPERATOR, "floor-1")
    epc, sscc = "3034F4E4E40002C000000001", "3154F4E4E40000000A000000"
    db.execute(
        "insert into items (epc, scheme, gtin, first_seen_at) values (%s, 'sgtin', '04012345000115', now())", (epc,)
    )
    db.execute("insert into lots (lot, gtin) values ('L-88', '04012345000115')")
    assert client.put(f"/api/v1/items/{epc}/lot", json={"lot": "L-88"}, headers=operator).status_code == 200
    packed = client.post(f"/api/v1/containers/{sscc}/contents", json={"add": [epc]}, headers=operator)
    assert packed.status_code == 200, packed.text
    assert db.execute(
        "select table_name, actor, object_key, after ->> 'lot' from audit_log where actor = 'floor-1' order by id"
    ).fetchall() == [("items", "floor-1", epc, "L-88"), ("container_changes", "floor-1", f"{sscc}/{epc}", None)]


def test_a_keys_secret_hash_never_reaches_the_log(client, admin, db) -> None:
    client.post("/api/v1/keys", json={"name": "erp", "role": "operator"}, headers=admin)
    client.get("/api/v1/sites", headers=admin)  # its last_used_at changes: not an entry of its own
    rows = db.execute("select operation, after from audit_log where table_name = 'api_keys' order by id").fetchall()
    assert [(operation, after["name"]) for operation, after in rows] == [("insert", "alice"), ("insert", "erp")]
    assert all("secret_sha256" not in after for _, after in rows)


def test_the_log_is_append_only(db) -> None:
    db.execute("insert into skus (gtin, name) values ('09506000134352', 'Vaccine 10x')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append only"):
        db.execute("update audit_log set actor = 'someone else'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("delete from audit_log")


def test_a_table_added_later_is_attached_with_one_call(db) -> None:
    db.execute("create temporary table rules (id text primary key, threshold real)")
    db.execute("select audit_attach('rules')")
    db.execute("insert into rules values ('low-stock', 5)")
    db.execute("update rules set threshold = 3")
    assert db.execute(
        "select operation, object_key, before ->> 'threshold', after ->> 'threshold' from audit_log"
        " where table_name = 'rules' order by id"
    ).fetchall() == [("insert", "low-stock", None, "5"), ("update", "low-stock", "5", "3")]


def test_the_audit_log_is_read_newest_first_page_by_page(client, admin, db) -> None:
    for number in range(3):
        client.put(f"/api/v1/sites/dc-{number}", json={**SITE, "id": f"dc-{number}"}, headers=admin)
    page = client.get("/api/v1/audit", params={"table": "locations", "limit": 2}, headers=admin).json()
    assert [entry["object"] for entry in page] == ["dc-2", "dc-1"]
    assert page[0]["after"]["timezone"] == "Europe/Berlin"
    assert page[0]["before"] is None
    rest = client.get("/api/v1/audit", params={"table": "locations", "before_id": page[-1]["id"]}, headers=admin).json()
    assert [entry["object"] for entry in rest] == ["dc-0"]
    by_object = client.get("/api/v1/audit", params={"object": "dc-1", "actor": "alice"}, headers=admin).json()
    assert [(entry["table"], entry["operation"]) for entry in by_object] == [("locations", "insert")]


def test_a_pooled_connection_forgets_its_actor_when_returned(dsn, db) -> None:
    """A connection lent during a request and reused outside one must not carry the old actor."""

    async def scenario() -> None:
        pool = AuditedPool(dsn, min_size=1, max_size=1)
        await pool.open()
        try:
            with acting(Actor("alice", "0123456789ab", "PUT /api/v1/skus/x", "r-1")):
                async with pool.connection() as conn:
                    await conn.execute("insert into skus (gtin, name) values ('09506000134352', 'a')")
                with pytest.raises(psycopg.errors.DivisionByZero):
                    # A request that fails inside a transaction: the pool rolls back, then clears the actor.
                    async with pool.connection() as conn, conn.transaction():
                        await conn.execute("select 1 / 0")
            async with pool.connection() as conn:
                await conn.execute("update skus set name = 'b'")
                cursor = await conn.execute("select current_setting('stocktrace.actor', true)")
                assert await cursor.fetchone() == ("",)
        finally:
            await pool.close()

    asyncio.run(scenario())
    assert db.execute("select actor, request from audit_log where table_name = 'skus' order by id").fetchall() == [
        ("alice", "PUT /api/v1/skus/x"),
        (f"db:{db.info.user}", None),
    ]


def test_acknowledging_and_silencing_alerts_are_audited_but_the_evaluators_writes_are_not(client, key_of, db) -> None:
    operator = key_of(Role.OPERATOR, "shift-lead")
    fingerprint = "5c38cc4209f73f11"
    db.execute(
        "insert into alerts (fingerprint, alertname, subject, severity, labels, annotations, group_key, state,"
        " starts_at, evaluated_at) values (%s, 'TemperatureExcursion', 'cold-1', 'critical',"
        " '{\"alertname\": \"TemperatureExcursion\"}', '{}', 'g', 'firing', now(), now())",
        (fingerprint,),
    )
    db.execute("update alerts set evaluated_at = now(), notified_at = now()")  # the evaluator's tick
    ack = client.post(f"/api/v1/alerts/{fingerprint}/ack", json={"by": "j.doe", "comment": "door"}, headers=operator)
    assert ack.status_code == 200, ack.text
    silence = {"matchers": [{"name": "subject", "value": "cold-1"}], "ends_at": "2099-01-01T00:00:00Z",
               "created_by": "j.doe", "comment": "defrost"}  # fmt: skip
    assert client.post("/api/v1/silences", json=silence, headers=operator).status_code == 201, "silences"
    assert db.execute(
        "select table_name, operation, actor, after ->> 'acknowledged_by' from audit_log"
        " where table_name in ('alerts', 'silences') order by id"
    ).fetchall() == [("alerts", "update", "shift-lead", "j.doe"), ("silences", "insert", "shift-lead", None)]
