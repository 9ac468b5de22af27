"""Publishing the boards to a running Grafana through its HTTP API, for installations that do not provision from
files: the folder, the TimescaleDB data source and every dashboard, created or updated, so running it again
changes nothing but what changed.

Grafana HTTP API: folders (POST /api/folders, PUT /api/folders/:uid), data sources (GET/PUT
/api/datasources/uid/:uid, POST /api/datasources), dashboards (POST /api/dashboards/db with overwrite).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError

from dashboards.datasource import DATASOURCE_UID

FOLDER_UID: Final = "stocktrace"
FOLDER_TITLE: Final = "stocktrace"
_NOT_FOUND: Final = 404


@dataclass
class PushReport:
    folder: str = ""
    datasource: str = ""
    dashboards: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        found = [f"folder {FOLDER_UID}: {self.folder}"]
        if self.datasource:
            found.append(f"data source {DATASOURCE_UID}: {self.datasource}")
        found += [f"dashboard {uid}: {status}" for uid, status in self.dashboards.items()]
        return found


def datasource_body(database_url: str) -> dict[str, Any]:
    """The data source as dashboards/provisioning/datasources/stocktrace.yaml declares it, for a database URL as
    Grafana reaches it (postgresql://user:password@host:port/database)."""
    parts = psycopg.conninfo.conninfo_to_dict(database_url)
    host, port = parts.get("host") or "localhost", parts.get("port") or "5432"
    return {
        "name": "stocktrace",
        "uid": DATASOURCE_UID,
        "type": "postgres",
        "access": "proxy",
        "url": f"{host}:{port}",
        "user": parts.get("user") or "postgres",
        "isDefault": True,
        "jsonData": {
            "database": parts.get("dbname") or "stocktrace",
            "sslmode": parts.get("sslmode") or "disable",
            "postgresVersion": 1500,
            "timescaledb": True,
        },
        "secureJsonData": {"password": str(parts.get("password") or "")},
    }


def _missing(error: GrafanaClientError) -> bool:
    return int(error.status_code) == _NOT_FOUND


def _untyped(api: GrafanaApi) -> Any:
    # grafana-client's element methods (api.folder.get_folder, ...) carry no annotations.
    return api


def ensure_folder(api: GrafanaApi) -> str:
    client = _untyped(api)
    try:
        folder = client.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        client.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        return "created"
    if folder.get("title") == FOLDER_TITLE:
        return "unchanged"
    client.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True)
    return "updated"


def ensure_datasource(api: GrafanaApi, body: Mapping[str, Any]) -> str:
    client = _untyped(api)
    try:
        client.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        client.datasource.create_datasource(dict(body))
        return "created"
    # The stored password cannot be read back to compare, so the data source is always written.
    client.datasource.update_datasource_by_uid(DATASOURCE_UID, dict(body))
    return "updated"


def push_dashboard(api: GrafanaApi, model: Mapping[str, Any]) -> str:
    response = _untyped(api).dashboard.update_dashboard(
        {"dashboard": dict(model), "folderUid": FOLDER_UID, "overwrite": True, "message": "stocktrace dashboards push"}
    )
    return str(response.get("status", "success"))


def push(
    api: GrafanaApi, dashboards: Mapping[str, Mapping[str, Any]], datasource: Mapping[str, Any] | None
) -> PushReport:
    """Folder first (dashboards go into it), then the data source (panels refer to it), then the dashboards."""
    report = PushReport(folder=ensure_folder(api))
    if datasource is not None:
        report.datasource = ensure_datasource(api, datasource)
    for uid, model in dashboards.items():
        report.dashboards[uid] = push_dashboard(api, model)
    return report
