"""`stocktrace dashboards push` against a local HTTP server that keeps Grafana's state for the endpoints used."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from grafana_client.api import GrafanaApi

from dashboards import export, push
from dashboards.cli import dashboards as dashboards_group
from tests.dashboards.grafana_fake import FakeGrafana

TOKEN = "glsa_test_token"
DATABASE = "postgresql://grafana:s3cret@timescaledb:5432/stocktrace"


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana(TOKEN)
    yield server
    server.close()


def api(grafana: FakeGrafana, token: str = TOKEN) -> GrafanaApi:
    client: GrafanaApi = GrafanaApi.from_url(grafana.url, credential=token, timeout=5)
    return client


def test_first_push_creates_folder_datasource_and_every_dashboard(grafana: FakeGrafana) -> None:
    report = push.push(api(grafana), export.render_all(), push.datasource_body(DATABASE))

    assert (report.folder, report.datasource) == ("created", "created")
    assert grafana.state.folders["stocktrace"]["title"] == "stocktrace"
    source = grafana.state.datasources["stocktrace"]
    assert (source["type"], source["url"], source["user"]) == ("postgres", "timescaledb:5432", "grafana")
    assert source["jsonData"]["timescaledb"] is True
    assert source["jsonData"]["database"] == "stocktrace"
    assert source["secureJsonData"] == {"password": "s3cret"}
    assert set(grafana.state.dashboards) == set(export.render_all())
    assert {saved["meta"]["folderUid"] for saved in grafana.state.dashboards.values()} == {"stocktrace"}


def test_second_push_updates_in_place(grafana: FakeGrafana) -> None:
    push.push(api(grafana), export.render_all(), push.datasource_body(DATABASE))
    calls_before = len(grafana.state.calls)

    report = push.push(api(grafana), export.render_all(), push.datasource_body(DATABASE))

    second = grafana.state.calls[calls_before:]
    assert report.folder == "unchanged"
    assert report.datasource == "updated"
    assert not [c for c in second if c.method == "POST" and c.path in ("/api/folders", "/api/datasources")]
    assert [c.method for c in second if c.path == "/api/datasources/uid/stocktrace"] == ["GET", "PUT"]
    assert all(c.body["overwrite"] is True for c in second if c.path == "/api/dashboards/db")
    assert len(grafana.state.datasources) == 1
    assert {saved["dashboard"]["version"] for saved in grafana.state.dashboards.values()} == {2}


def test_a_renamed_folder_gets_its_title_back(grafana: FakeGrafana) -> None:
    push.push(api(grafana), export.render_all(), None)
    grafana.state.folders["stocktrace"]["title"] = "renamed by hand"

    report = push.push(api(grafana), export.render_all(), None)

    assert report.folder == "updated"
    assert grafana.state.folders["stocktrace"]["title"] == "stocktrace"
    assert grafana.state.datasources == {}


def test_cli_pushes_and_reports(grafana: FakeGrafana) -> None:
    args = ["push", "--grafana-url", grafana.url, "--token", TOKEN, "--datasource-url", DATABASE]

    result = CliRunner().invoke(dashboards_group, args)

    assert result.exit_code == 0, result.output
    assert "folder stocktrace: created" in result.output
    assert "dashboard stocktrace-operations: success" in result.output


def test_cli_refuses_with_grafanas_reason_on_a_bad_token(grafana: FakeGrafana) -> None:
    args = ["push", "--grafana-url", grafana.url, "--token", "wrong", "--no-datasource"]

    result = CliRunner().invoke(dashboards_group, args)

    assert result.exit_code == 1
    assert "Unauthorized" in result.output
    assert grafana.state.dashboards == {}
