"""Alert rules and dashboards: promtool accepts the rules and their unit tests pass, and every metric they
read is one a service really exports (a renamed metric would otherwise leave a panel or an alert blind)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DEPLOY, REPO, SERVICES
from .stack import Stack

PROMETHEUS = DEPLOY / "prometheus"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
# Series that come from Prometheus itself or from kube-state-metrics, not from our services.
EXTERNAL = {"up", "kube_pod_container_status_waiting_reason"}
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, check=False)
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
    """The series a PromQL expression reads: the names left once label matchers, strings, ranges and
    groupings are gone that are not followed by `(` (a function or an aggregation) and are no keyword."""
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_strings = re.sub(r"\"[^\"]*\"", "", without_labels)
    without_grouping = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_grouping)
    words = set(re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", without_ranges))
    return words - KEYWORDS


def _expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "shuidian.yml").read_text())
    found = [(f"alert {rule['alert']}", rule["expr"]) for group in rules["groups"] for rule in group["rules"]]
    for dashboard in DASHBOARDS:
        for panel in _panels(json.loads(dashboard.read_text())["panels"]):
            found += [(f"{dashboard.name}: {panel['title']}", target["expr"]) for target in panel.get("targets", [])]
    return found


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


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


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    # Grafana is not installed here; Prometheus's own parser is: each panel query becomes a recording rule.
    expressions = [(where, expr) for where, expr in _expressions() if not where.startswith("alert ")]
    assert len(expressions) >= 25
    rules = [{"record": f"dashboard:query_{n}", "expr": expr} for n, (_, expr) in enumerate(expressions)]
    (tmp_path / "dashboards.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in _promtool("check", "rules", "dashboards.yml", cwd=tmp_path)


def test_promtool_refuses_a_broken_query(tmp_path: Path) -> None:
    """The check above can fail: an unbalanced query is refused."""
    broken = {"groups": [{"name": "x", "rules": [{"record": "dashboard:broken", "expr": "sum(rate(x_total[5m])"}]}]}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        ["promtool", "check", "rules", "broken.yml"], capture_output=True, cwd=tmp_path, check=False
    )
    assert result.returncode != 0


def _scraped(text: str) -> set[str]:
    """Every series name an exposition can carry, including the families that have no sample yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                    "summary": ("_count", "_sum", "_created"), "gauge": ()}.get(family.type, ())  # fmt: skip
        names |= {family.name + suffix for suffix in suffixes}
    return names


@pytest.mark.timeout(1200)  # the stack may come up for this test first
async def test_dashboards_and_alerts_read_metrics_the_running_services_export(stack: Stack) -> None:
    exported: dict[str, set[str]] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for service in SERVICES:
            url = stack.gateway if service == "gateway" else stack.backends[service]
            response = await client.get(f"{url}/metrics")
            assert response.status_code == 200, service
            exported[service] = _scraped(response.text)
    everything = set().union(*exported.values())
    assert "billing_readings_committed_total" in exported["billing"]  # the scrape itself works
    assert "shuidian_http_requests_total" in exported["gateway"]
    unknown = {
        (where, metric)
        for where, expr in _expressions()
        for metric in _metrics_in(expr)
        if metric not in everything and metric not in EXTERNAL
    }
    assert unknown == set()
