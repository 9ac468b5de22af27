"""The committed dashboards/json/ is what the code renders, and it fits the provisioning that loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from dashboards import export
from dashboards.cli import dashboards as dashboards_group
from dashboards.datasource import DATASOURCE_UID

PROVISIONING = Path(export.__file__).parent / "provisioning"


def _walk(node: Any) -> list[dict[str, Any]]:
    """Every object with a "datasource" key, anywhere in the model."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "datasource" in node:
            found.append(node)
        for value in node.values():
            found += _walk(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk(value)
    return found


def test_committed_json_is_what_the_code_renders() -> None:
    problems = export.differences()
    assert problems == [], "run `stocktrace dashboards export` and commit dashboards/json/: " + "; ".join(problems)


def test_export_check_fails_on_a_stale_folder(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(dashboards_group, ["export", "--out", str(tmp_path)]).exit_code == 0
    assert runner.invoke(dashboards_group, ["export", "--out", str(tmp_path), "--check"]).exit_code == 0

    (tmp_path / "stocktrace-operations.json").write_text("{}\n")
    (tmp_path / "old-board.json").write_text("{}\n")
    result = runner.invoke(dashboards_group, ["export", "--out", str(tmp_path), "--check"])

    assert result.exit_code == 1
    assert "stocktrace-operations.json: differs from the code" in result.output
    assert "old-board.json: no board has this uid" in result.output


def test_every_query_uses_the_provisioned_datasource() -> None:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "stocktrace.yaml").read_text())["datasources"]
    assert source["uid"] == DATASOURCE_UID
    for uid, model in export.render_all().items():
        refs = {(node["datasource"] or {}).get("uid") for node in _walk(model)}
        assert refs == {DATASOURCE_UID}, uid


def test_boards_are_distinct_and_their_panels_numbered() -> None:
    models = export.render_all()
    assert len({model["title"] for model in models.values()}) == len(models)
    for uid, model in models.items():
        ids = [panel["id"] for panel in model["panels"]]
        assert ids == list(range(1, len(ids) + 1)), uid
        assert "id" not in model, "a provisioned dashboard is matched by uid; a numeric id would clash"
        assert [a["name"] for a in model["annotations"]["list"]] == ["Alerts"], uid


def test_every_time_series_panel_gets_the_alert_annotations() -> None:
    for uid, model in export.render_all().items():
        (annotation,) = model["annotations"]["list"]
        assert annotation["enable"] is True
        assert annotation["target"]["format"] == "table"
        assert "from alerts" in annotation["target"]["rawSql"]
        # An annotation applies to every panel unless it names some; none of ours do.
        assert "filter" not in annotation, uid
