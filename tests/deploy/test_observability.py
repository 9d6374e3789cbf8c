"""Alert rules and dashboards: promtool accepts the rules and their unit tests pass, and every metric they
read is one a service really exports (a renamed metric would otherwise leave a panel or an alert blind)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from .conftest import DEPLOY, REPO

PROMETHEUS = DEPLOY / "prometheus"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
# Series that come from Prometheus itself or from kube-state-metrics, not from our services.
EXTERNAL = {"up", "kube_pod_container_status_waiting_reason"}
FUNCTIONS = {"sum", "rate", "increase", "deriv", "max", "min", "histogram_quantile", "by", "and", "or", "on"}


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=PROMETHEUS, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    assert "SUCCESS" in _promtool("check", "rules", "rules/shuidian.yml")
    assert "SUCCESS" in _promtool("check", "config", "--syntax-only", "prometheus.yml")


def test_the_alert_rules_unit_tests_pass() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "tests/shuidian_test.yml")


def test_every_required_alert_exists() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "shuidian.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "ShuidianCollectorBacklogGrowing",
        "ShuidianBillingLag",
        "ShuidianCommandStuck",
        "ShuidianBrokerDisconnected",
        "ShuidianMigrationFailed",
        "ShuidianHolidayCalendarMissingNextYear",
    } <= alerts


def _exported_metrics() -> set[str]:
    """Names passed to prometheus_client's Counter/Gauge/Histogram in the services and the kit."""
    pattern = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"([a-z_:][a-z0-9_:]*)\"", re.S)
    names: set[str] = set()
    for source in (REPO / "services").glob("*/src/**/*.py"):
        for kind, name in pattern.findall(source.read_text()):
            names.add(name)
            if kind in ("Histogram", "Summary"):
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def _metrics_in(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_strings = re.sub(r"\"[^\"]*\"", "", without_labels)
    without_grouping = re.sub(r"\b(by|without)\s*\([^)]*\)", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_grouping)
    words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", without_ranges))
    return {w for w in words if "_" in w or w == "up"} - FUNCTIONS


def _expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "shuidian.yml").read_text())
    found = [(f"alert {rule['alert']}", rule["expr"]) for group in rules["groups"] for rule in group["rules"]]
    for dashboard in DASHBOARDS:
        for panel in json.loads(dashboard.read_text())["panels"]:
            found += [(f"{dashboard.name}: {panel['title']}", target["expr"]) for target in panel.get("targets", [])]
    return found


def test_dashboards_and_alerts_read_only_metrics_the_services_export() -> None:
    exported = _exported_metrics()
    assert "billing_readings_committed_total" in exported  # the scan itself works
    unknown = {
        (where, metric)
        for where, expr in _expressions()
        for metric in _metrics_in(expr)
        if metric not in exported and metric not in EXTERNAL
    }
    assert unknown == set()


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    assert DASHBOARDS
    text = " ".join(expr for _, expr in _expressions())
    for metric in (
        "billing_readings_committed_total",
        "collector_store_depth_readings",
        "control_command_outcomes_total",
        "collector_meter_polls_total",
        "alarm_alarms_raised_total",
        "alarm_notification_attempts_total",
        "insights_readings_archived_total",
        "insights_job_last_day_timestamp",
        "shuidian_http_requests_total",
        "shuidian_http_request_seconds_bucket",
    ):
        assert metric in text, metric
