"""Routes configuration: matchers as Alertmanager reads them, route order, and errors that name the field."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from alerts.delivery_cli import delivery_group
from alerts.routes import (
    ROUTES_FILE_ENV,
    Grouping,
    RoutesConfig,
    RoutesError,
    current_routes,
    destinations,
    grouping,
    load_routes,
    parse_duration,
    parse_matcher,
)

EXAMPLE = Path(__file__).parents[2] / "alerts" / "routes.example.yaml"
SECRETS = {
    "STOCKTRACE_WEBHOOK_HMAC_KEY": "k",
    "WMS_TOKEN": "t",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/x",
    "TEAMS_WORKFLOW_URL": "https://prod.westeurope.logic.azure.com/workflows/1",
    "PAGERDUTY_ROUTING_KEY": "r",
    "GRAFANA_TOKEN": "g",
}


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ('severity="critical"', {"severity": "critical"}, True),
        ("severity=critical", {"severity": "critical"}, True),
        ('severity!="critical"', {"severity": "warning"}, True),
        ('severity!="critical"', {}, True),
        ('alertname=~"Cold.*"', {"alertname": "ColdChainBreach"}, True),
        ('alertname=~"Cold"', {"alertname": "ColdChainBreach"}, False),  # anchored at both ends
        ('alertname!~"Cold.*|Low.*"', {"alertname": "LowStock"}, False),
        ('site=""', {}, True),  # an absent label is the empty string
        ('note="a \\"quoted\\" word"', {"note": 'a "quoted" word'}, True),
    ],
)
def test_matchers(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_matcher(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["severity", "=critical", 'a=~"("', 'a="unclosed'])
def test_bad_matchers(text: str) -> None:
    with pytest.raises(ValueError, match=r"matcher|regular expression|quoted"):
        parse_matcher(text)


def test_first_match_wins_unless_continue_then_defaults() -> None:
    config = RoutesConfig.model_validate(
        {
            "receivers": [{"name": n, "type": "webhook", "url": "http://x"} for n in ("all", "page", "chat", "rest")],
            "routes": [
                {"receivers": ["all"], "continue": True},
                {"matchers": ['severity="critical"'], "receivers": ["page", "chat"], "group_by": ["site"]},
                {"matchers": ['alertname=~"Cold.*"'], "receivers": ["chat"]},
                {"matchers": ['alertname="LowStock"'], "receivers": ["all"]},
            ],
            "default_receivers": ["rest"],
        }
    )
    critical = destinations(config, {"alertname": "ColdChainBreach", "severity": "critical"})
    assert [d.receiver for d in critical] == ["all", "page", "chat"]
    assert critical[1].group_by == ("site",)
    assert critical[0].group_by == ("alertname",)
    assert critical[1].route_key == '{}/{severity="critical"}'
    warning = destinations(config, {"alertname": "ColdChainBreach", "severity": "warning"})
    assert [d.receiver for d in warning] == ["all", "chat"]
    assert [d.receiver for d in destinations(config, {"alertname": "LowStock"})] == ["all"]  # each once
    no_catch_all = config.model_copy(update={"routes": config.routes[1:]})
    other = destinations(no_catch_all, {"alertname": "DeviceOffline"})
    assert [(d.receiver, d.route_key) for d in other] == [("rest", "{}")]


def test_grouping_timers_come_from_the_route_else_the_top_level() -> None:
    config = RoutesConfig.model_validate(
        {
            "group_wait": "10s",
            "group_interval": "1m",
            "receivers": [{"name": n, "type": "webhook", "url": "http://x"} for n in ("page", "chat")],
            "routes": [
                {"matchers": ['severity="critical"'], "receivers": ["page"], "group_wait": 0, "repeat_interval": "1h",
                 "continue": True},
                {"receivers": ["chat"], "group_by": ["site"]},
            ],
        }
    )  # fmt: skip
    page, chat = destinations(config, {"alertname": "ColdChainBreach", "severity": "critical"})
    assert page.grouping == Grouping(("alertname",), timedelta(0), timedelta(minutes=1), timedelta(hours=1))
    assert chat.grouping == Grouping(("site",), timedelta(seconds=10), timedelta(minutes=1), None)
    # Without any: every change is sent at once, and the rules decide repeats.
    assert grouping(RoutesConfig(), None) == Grouping(("alertname",), timedelta(0), timedelta(0), None)


def test_example_file_loads_with_its_secrets_from_the_environment() -> None:
    config = load_routes(EXAMPLE, environ=SECRETS)
    assert {r.type for r in config.receivers} == {"webhook", "slack", "teams", "pagerduty", "grafana"}
    slack = config.receiver("cold-chain-slack")
    assert slack is not None
    assert slack.type == "slack"
    assert slack.url == SECRETS["SLACK_WEBHOOK_URL"]
    webhook = config.receiver("warehouse-system")
    assert webhook is not None
    assert webhook.type == "webhook"
    assert webhook.headers == {"Authorization": "Bearer t"}
    assert config.delivery.max_age.total_seconds() == 86400
    assert [d.receiver for d in destinations(config, {"alertname": "ColdChainExcursion", "severity": "critical"})] == [
        "dashboards", "on-call", "cold-chain-slack",
    ]  # fmt: skip
    # Routing does not need the secrets: without an environment they stay as written.
    unexpanded = load_routes(EXAMPLE)
    pagerduty = unexpanded.receiver("on-call")
    assert pagerduty is not None
    assert pagerduty.type == "pagerduty"
    assert pagerduty.routing_key == "${PAGERDUTY_ROUTING_KEY}"


def test_missing_secret_names_its_path(tmp_path: Path) -> None:
    secrets = {k: v for k, v in SECRETS.items() if k != "WMS_TOKEN"}
    with pytest.raises(RoutesError, match=r"receivers\.0\.headers\.Authorization refers to \$\{WMS_TOKEN\}"):
        load_routes(EXAMPLE, environ=secrets)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("receivers: [{name: a, type: email, to: x}]", r"receivers\.0: Input tag 'email'"),
        ("receivers: [{name: a, type: slack}]", r"receivers\.0\.slack\.url: Field required"),
        ("receivers: [{name: a, type: slack, url: x, colour: red}]", r"receivers\.0\.slack\.colour: Extra inputs"),
        ("receivers: [{name: 'a b', type: slack, url: x}]", r"receivers\.0\.slack\.name: String should match"),
        ("routes: [{receivers: [ghost]}]", r"routes\.0\.receivers: unknown receiver 'ghost'"),
        ("routes: [{matchers: ['sev'], receivers: [a]}]", r"routes\.0\.matchers: Value error, 'sev' is not a matcher"),
        ("delivery: {max_age: 'a day'}", r"delivery\.max_age: Value error, 'a day' is not a duration"),
        ("receivers: [{name: a, type: slack, url: x}, {name: a, type: teams, url: y}]", "repeated: a"),
        ("[1, 2]", r"\(top level\): Input should be a valid dictionary"),
        ("routes: [{receivers: [a], group_wait: soon}]", r"routes\.0\.group_wait: Value error, 'soon' is not a dur"),
        ("group_interval: -5", r"group_interval: Value error, a duration cannot be negative"),
    ],
)
def test_errors_name_the_path(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(document)
    with pytest.raises(RoutesError, match=message) as caught:
        load_routes(path)
    assert str(path) in str(caught.value)


def test_durations() -> None:
    assert parse_duration("1h30m").total_seconds() == 5400
    assert parse_duration("500ms").total_seconds() == 0.5
    assert parse_duration(90).total_seconds() == 90
    for bad in ("", "5 minutes", "1h-", -1, True):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_current_routes_follows_the_environment_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROUTES_FILE_ENV, raising=False)
    assert current_routes() is None
    path = tmp_path / "routes.yaml"
    path.write_text("receivers: [{name: a, type: slack, url: x}]\ndefault_receivers: [a]\n")
    monkeypatch.setenv(ROUTES_FILE_ENV, str(path))
    first = current_routes()
    assert first is not None
    assert first.default_receivers == ["a"]
    assert current_routes() is first  # cached while the file is unchanged
    path.write_text("receivers: [{name: b, type: slack, url: x}]\ndefault_receivers: [b]\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = current_routes()
    assert second is not None
    assert second.default_receivers == ["b"]
    monkeypatch.setenv(ROUTES_FILE_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(RoutesError, match="cannot read the alert routes file"):
        current_routes()


def test_check_command_validates_and_shows_where_an_alert_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    shown = runner.invoke(
        delivery_group, ["check", "--routes", str(EXAMPLE), "-l", "alertname=LowStock", "-l", "severity=warning"]
    )
    assert shown.exit_code == 0, shown.output
    assert "receiver on-call" in shown.output
    assert '-> warehouse-system (route {}/{alertname=~"LowStock|InventoryVariance"}' in shown.output
    monkeypatch.delenv("GRAFANA_TOKEN")
    broken = runner.invoke(delivery_group, ["check", "--routes", str(EXAMPLE)])
    assert broken.exit_code == 1
    assert "receivers.4.token refers to ${GRAFANA_TOKEN}" in broken.output
