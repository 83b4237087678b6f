"""Prometheus's configuration (deploy/prometheus/): valid for promtool, its rules unit-tested,
and every metric the rules read one the app or nginx's exporter actually exposes, so that a
renamed metric fails here instead of leaving a dashboard blank and an alert silent."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from deploy.native.monitoring import app_job_named
from deploy.prometheus.client import duration_seconds
from service.config import ROOT

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "notes.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "notes_test.yml"
TARGETS = PROMETHEUS_DIR / "targets"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# The names the app exposes, fixed; a histogram is read through its series' suffixes.
APP_METRICS = {
    "http_requests_total",
    "http_requests_in_progress",
    "db_pool_connections_in_use",
    "db_pool_connections_idle",
    "db_pool_connections_max",
    "db_pool_waiting_requests",
    "worker_cpu_seconds",
    "worker_resident_memory_bytes",
    "db_pool_timeouts_total",
    "app_workers_live",
    "gunicorn_workers_configured",
    "app_build_info",
    "stack_disk_free_bytes",
    "stack_disk_size_bytes",
}
APP_HISTOGRAMS = {"http_request_duration_seconds", "db_pool_wait_seconds"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Every scrape's own health, and nginx-prometheus-exporter's metrics.
PROMETHEUS_METRICS = {"up"}
EXPORTER_PREFIX = "nginx_"

REQUIRED_ALERTS = {
    "DiskSpaceLow",
    "HighErrorRatio",
    "HighLatencyP99",
    "DatabasePoolSaturated",
    "DatabasePoolTimeouts",
    "WorkersBelowConfigured",
    "TargetDown",
    "NginxDown",
}
SEVERITIES = {"warning", "critical"}

# PromQL, reduced to what can name a metric: strings, label matchers, range and subquery
# durations, and label lists go first; what is left that is not a function call, a keyword or
# part of a number is a metric name.
STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGES = re.compile(r"\[[^\[\]]*\]")
LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
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
# A Go template action, {{ ... }}, whose strings may hold braces: {{ printf "x{a=%q}" ... }}.
TEMPLATE_ACTION = re.compile(r'\{\{((?:[^}"]|"(?:\\.|[^"\\])*")*)\}\}')
TEMPLATE_STRING = re.compile(r'"((?:\\.|[^"\\])*)"')
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HOST_PORT = re.compile(r"[A-Za-z0-9.-]+:\d{1,5}")
# level:metric:operations (https://prometheus.io/docs/practices/rules/)
RECORDING_NAME = re.compile(r"[a-z_]*:[a-z0-9_]+:[a-z0-9_]+")


# --- helpers ----------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )


def rules() -> list[dict[str, Any]]:
    data = load_yaml(RULES)
    found = [rule for group in data["groups"] for rule in group["rules"]]
    assert found, f"{RULES} has no rules"
    return found


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def metric_names(expr: str) -> set[str]:
    """The metric names (and recording rule names) a PromQL expression selects."""
    reduced = STRING.sub(" ", expr)
    assert "__name__" not in reduced, f"select metrics by name, not by __name__: {expr}"
    for pattern in (MATCHERS, RANGES, LABEL_LISTS):
        reduced = pattern.sub(" ", reduced)
    return {name for name in IDENTIFIER.findall(reduced) if name.lower() not in KEYWORDS}


def template_queries(text: str) -> list[str]:
    """The PromQL queries a Go template (an annotation) runs through `query`."""
    return [
        string
        for action in TEMPLATE_ACTION.findall(text)
        if re.search(r"\bquery\b", TEMPLATE_STRING.sub(" ", action))
        for string in TEMPLATE_STRING.findall(action)
    ]


def exposed(name: str) -> bool:
    """Whether a series of this name exists: the app's, Prometheus's own, or the exporter's."""
    if name in APP_METRICS or name in PROMETHEUS_METRICS or name.startswith(EXPORTER_PREFIX):
        return True
    return any(name == base + suffix for base in APP_HISTOGRAMS for suffix in HISTOGRAM_SUFFIXES)


def series_name(series: str) -> str:
    """The metric name of a promtool input series, `name{label="value"}`."""
    return series.partition("{")[0].strip()


# --- promtool -----------------------------------------------------------------------------------


def test_promtool_checks_the_config_and_its_file_sd_files() -> None:
    result = promtool("check", "config", str(CONFIG.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("interval", [1, 5, 60])
def test_the_native_runners_config_is_the_files_at_its_scrape_interval(
    interval: int, tmp_path: Path
) -> None:
    """PROMETHEUS_SCRAPE_INTERVAL: scrapes and rules at that interval, a hung target's
    timeout within it, and promtool still takes the file."""
    for name in ("rules", "targets"):
        (tmp_path / name).symlink_to(PROMETHEUS_DIR / name)
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(app_job_named("notes", interval))
    config = load_yaml(rendered)
    assert config["global"] == {
        "scrape_interval": f"{interval}s",
        "evaluation_interval": f"{interval}s",
        "scrape_timeout": f"{interval * 800}ms",
    }
    expected = load_yaml(CONFIG)
    assert config["scrape_configs"] == expected["scrape_configs"]
    result = promtool("check", "config", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5), ("500ms", 0.5), ("1m30s", 90), ("1h", 3600), ("2d", 172800)],
)
def test_prometheus_durations_are_read_in_seconds(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "s", "5 s", "1.5s", "5sec", "-5s"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        duration_seconds(text)


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the config ---------------------------------------------------------------------------------


def test_config_scrapes_the_app_via_nginx_the_exporter_and_itself() -> None:
    config = load_yaml(CONFIG)
    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["evaluation_interval"] == "5s"
    # Relative to the config file: /etc/prometheus in compose, a symlink farm in native mode.
    assert config["rule_files"] == ["rules/*.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"notes", "nginx", "prometheus"}
    assert jobs["notes"].get("metrics_path", "/metrics") == "/metrics"
    for name in ("notes", "nginx", "prometheus"):
        [sd] = jobs[name]["file_sd_configs"]
        assert sd["files"] == [f"targets/{name}.json"], name
        assert "static_configs" not in jobs[name], name


@pytest.mark.parametrize(
    ("name", "targets", "labels"),
    [
        ("notes", ["nginx:8081"], {"service": "notes"}),
        ("nginx", ["nginx-exporter:9113"], {}),
        ("prometheus", ["localhost:9090"], {}),
    ],
)
def test_committed_targets_are_file_sd_json(
    name: str, targets: list[str], labels: dict[str, str]
) -> None:
    data = json.loads((TARGETS / f"{name}.json").read_text())
    assert isinstance(data, list)
    assert data, f"{name}.json lists no target groups"
    for group in data:
        assert isinstance(group, dict)
        assert set(group) <= {"targets", "labels"}, group
        assert isinstance(group["targets"], list)
        assert group["targets"], group
        for target in group["targets"]:
            assert isinstance(target, str)
            assert HOST_PORT.fullmatch(target), f"not host:port: {target!r}"
        for label, value in group.get("labels", {}).items():
            assert LABEL_NAME.fullmatch(label), label
            assert not label.startswith("__"), f"{label} is reserved for Prometheus"
            assert isinstance(value, str), label
    # The compose services (nginx's ops port, the exporter's default port).
    assert [target for group in data for target in group["targets"]] == targets
    assert {k: v for group in data for k, v in group.get("labels", {}).items()} == labels


# --- the rules ----------------------------------------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = """
        histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{status=~"5..", x='y'}[5m])))
        > 0.5 and on (route) label_replace(b:c:d offset 1m, "to", "$1", "from", "(.*)") > 1e3
        or max without (pid) (max_over_time(c[10m:1m])) * inf
        """
    assert metric_names(expr) == {"a_bucket", "b:c:d", "c"}
    annotation = '{{ $value }} of {{ with printf "max(e{job=%q})" $labels.job | query }}{{ "f" }}'
    assert template_queries(annotation) == ["max(e{job=%q})"]


def test_rules_read_only_metrics_that_are_exposed() -> None:
    defined = recorded()
    unknown: dict[str, set[str]] = {}
    for rule in rules():
        used = metric_names(rule["expr"])
        for text in rule.get("annotations", {}).values():
            for query in template_queries(text):
                used |= metric_names(query)
        assert used, f"{rule.get('record') or rule.get('alert')} reads no metric"
        missing = {name for name in used if not exposed(name) and name not in defined}
        if missing:
            unknown[rule.get("record") or rule["alert"]] = missing
    assert not unknown, f"rules read metrics nothing exposes: {unknown}"


def test_rule_tests_feed_only_metrics_that_are_exposed() -> None:
    # A unit test fed the old name of a renamed metric would still pass.
    data = load_yaml(RULE_TESTS)
    names = {
        series_name(series["series"]) for test in data["tests"] for series in test["input_series"]
    }
    assert {name for name in names if not exposed(name)} == set()


def test_recording_rules_are_named_level_metric_operation() -> None:
    names = [rule["record"] for rule in rules() if "record" in rule]
    assert len(names) == len(set(names)), "a recording rule is defined twice"
    for name in names:
        assert RECORDING_NAME.fullmatch(name), name
    assert {
        "route:http_requests:rate1m",
        "route:http_request_duration_seconds:p99_5m",
    } <= set(names)


def test_alerts_have_a_delay_a_severity_and_say_what_they_saw() -> None:
    found = alerts()
    assert set(found) >= REQUIRED_ALERTS
    for name, rule in found.items():
        assert "for" in rule, f"{name}: no `for`"
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert "$value" in annotations["description"], f"{name}: description without the value"


def test_every_alert_and_recording_rule_is_unit_tested() -> None:
    data = load_yaml(RULE_TESTS)
    tests = data["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert fired == set(alerts()), "alerts without a test in which they fire"
    assert quiet == set(alerts()), "alerts without a test in which they stay quiet"
    expressions = {case["expr"] for test in tests for case in test.get("promql_expr_test", [])}
    assert recorded() <= expressions, "recording rules without a value test"
