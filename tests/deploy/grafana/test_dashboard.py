"""The Grafana dashboard (deploy/grafana/): the committed JSON is what dashboard.py generates,
its panels are well formed, Grafana's provisioning points at it and at Prometheus, and every
query of every panel returns data from the real Prometheus scraping the loaded stack."""

import asyncio
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml import YAML

from deploy.grafana.dashboard import ALL_REQUESTS, REQUESTS_BY_HOST
from deploy.grafana.variables import substitute as substitute_variables
from deploy.prometheus.client import Series
from service.config import ROOT
from tests.metrics import instant_query
from tests.stack import Load, Stack, background_load

GRAFANA_DIR = ROOT / "deploy" / "grafana"
GENERATOR = GRAFANA_DIR / "dashboard.py"
DASHBOARD = GRAFANA_DIR / "dashboards" / "notes.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "notes.yml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
ROWS = ["Traffic", "Latency", "Workers", "Database pool", "nginx", "Scaling lab and capacity"]
UNITS = {"reqps", "s", "ms", "percentunit", "bytes", "short"}
GRID_WIDTH = 24

# What Grafana puts in place of its variables, as it would for "All" routes over the last 15m
# with a 5 s scrape interval: `$route`'s "All" value is `.*`, and `$__rate_interval` is at
# least four scrape intervals (1m here, so that rate() surely has two samples).
SUBSTITUTIONS = {
    "route": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "15m",
    "__range_s": "900",
    "__range_ms": "900000",
}

# The panels with a series per worker: a worker is a pid on an app host, and pids repeat
# across hosts (each its own scrape target, told apart by `instance`).
PER_WORKER_PANELS = {
    "CPU per worker",
    "Resident memory per worker",
    "Pool connections per worker",
    "Requests waiting for a connection",
    "CPU limit per worker",
    "Worker CPU against its limit",
}
# A PromQL label list: `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`.
GROUPING = re.compile(r"\b(by|without|on|ignoring)\s*\(([^)]*)\)")
# max/min/avg without a label list, and the first name they read.
UNGROUPED_EXTREME = re.compile(r"\b(max|min|avg)\s*\(\s*([A-Za-z_:][\w:]*)")


def yaml_file(path: Path) -> dict[str, Any]:
    data = YAML(typ="safe", pure=True).load(path)
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def panels() -> list[dict[str, Any]]:
    """Every panel that is not a row."""
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) for every target of every panel."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in panels()
        for target in panel["targets"]
    ]


def substitute(expr: str) -> str:
    """The expression as Grafana sends it to Prometheus; an unknown variable fails."""
    return substitute_variables(expr, SUBSTITUTIONS)


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def grafana_mount_target(source: Path) -> str:
    """Where docker-compose.yml's grafana service mounts the host directory `source`."""
    grafana = yaml_file(COMPOSE_FILE)["services"]["grafana"]
    for volume in grafana["volumes"]:
        if not isinstance(volume, dict):
            continue
        if (COMPOSE_FILE.parent / volume["source"]).resolve() == source:
            assert volume.get("read_only"), f"{source} is mounted writable"
            return str(volume["target"])
    raise AssertionError(f"grafana does not mount {source}")


# --- the generator -----------------------------------------------------------------------------


def test_committed_json_is_what_the_generator_writes(tmp_path: Path) -> None:
    committed = DASHBOARD.read_text(encoding="utf-8")
    assert isinstance(json.loads(committed), dict)

    check = generate("--check")
    assert check.returncode == 0, f"run python {GENERATOR.relative_to(ROOT)}:\n{check.stderr}"

    # Written afresh, twice: byte-identical to the committed file and to each other.
    for name in ("first.json", "second.json"):
        result = generate("--output", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        fresh = (tmp_path / name).read_text(encoding="utf-8")
        assert json.loads(fresh) == json.loads(committed)
        assert fresh == committed

    # --check does catch a stale file.
    stale = tmp_path / "stale.json"
    stale.write_text(committed.replace('"Notes stack"', '"Stale stack"'), encoding="utf-8")
    result = generate("--check", "--output", str(stale))
    assert result.returncode == 1
    assert "out of date" in result.stderr


def test_another_stack_name_gets_its_own_title_uid_and_file(tmp_path: Path) -> None:
    """STACK_NAME=inventory: the same panels under the deployment's own title and uid."""
    output = tmp_path / "inventory.json"
    result = generate("--name", "inventory", "--output", str(output))
    assert result.returncode == 0, result.stderr
    board, notes = json.loads(output.read_text()), json.loads(DASHBOARD.read_text())
    assert (board["title"], board["uid"]) == ("Inventory stack", "inventory-stack")
    assert board["tags"][0] == "inventory"
    assert board["panels"] == notes["panels"]


# --- the dashboard's structure -----------------------------------------------------------------


def test_dashboard_settings_and_variables() -> None:
    found = dashboard()
    assert found["uid"] == "notes-stack"
    assert found["title"] == "Notes stack"
    assert 39 <= found["schemaVersion"] < 45
    assert found["time"] == {"from": "now-15m", "to": "now"}
    assert found["refresh"] == "5s"
    # The SDK leaves `id` out rather than writing null: the same for Grafana.
    assert found.get("id") is None, "a provisioned dashboard must not carry a database id"

    variables = {variable["name"]: variable for variable in found["templating"]["list"]}
    assert set(variables) == {"datasource", "route"}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    route = variables["route"]
    assert route["type"] == "query"
    assert route["query"] == "label_values(http_requests_total, route)"
    assert route["datasource"] == DATASOURCE_REF
    assert route["multi"] is True
    assert route["includeAll"] is True
    # The queries' `=~"$route"` relies on "All" being a regex that matches every route.
    assert route["allValue"] == SUBSTITUTIONS["route"]


def test_panels_have_unique_ids_queries_units_and_descriptions() -> None:
    every = dashboard()["panels"]
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    assert [panel["title"] for panel in every if panel["type"] == "row"] == ROWS
    assert every[0]["type"] == "row", "the first panel is not under a row"

    titles = [panel["title"] for panel in panels()]
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    for panel in panels():
        title = panel["title"]
        assert panel["type"] in {"timeseries", "stat", "table"}, title
        assert panel["datasource"] == DATASOURCE_REF, title
        assert panel.get("description", "").strip(), f"{title}: no description"
        assert panel["fieldConfig"]["defaults"].get("unit") in UNITS, f"{title}: unit"
        targets = panel["targets"]
        assert targets, f"{title}: no queries"
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{title}: duplicate refIds"
        for target in targets:
            assert target["datasource"] == DATASOURCE_REF, f"{title} {target['refId']}"
            assert target["expr"].strip(), f"{title} {target['refId']}: empty expr"

    # Every `$route` is a regex match: "All" is `.*`, and several routes are an alternation.
    for title, ref_id, expr in queries():
        assert not re.search(r'!?=\s*"\$route"', expr.replace('=~"$route"', "")), (
            f"{title} {ref_id}: $route must be matched with =~"
        )
        substitute(expr)


def test_panels_tile_the_grid_under_their_rows() -> None:
    taken: set[tuple[int, int]] = set()
    current_row: str | None = None
    by_row: dict[str, int] = {}
    for panel in sorted(
        dashboard()["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])
    ):
        pos = panel["gridPos"]
        assert min(pos["w"], pos["h"], pos["x"] + 1) > 0, panel["title"]
        assert pos["x"] + pos["w"] <= GRID_WIDTH, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            assert pos == {"h": 1, "w": GRID_WIDTH, "x": 0, "y": pos["y"]}
            assert panel["collapsed"] is False
            current_row = panel["title"]
            by_row[current_row] = 0
        else:
            assert current_row is not None
            by_row[current_row] += 1
    assert all(by_row[row] >= 2 for row in ROWS), by_row


def test_required_views_are_on_the_dashboard() -> None:
    """The metrics each view is about, and the units that make its axis readable."""
    expected = {
        "Request rate by route and status": ("http_requests_total", "reqps"),
        "Request rate by host": ("sum by (instance) (rate(http_requests_total", "reqps"),
        "Error ratio (5xx / all)": ('status=~"5.."', "percentunit"),
        "Latency p50 / p95 / p99 by route": ("http_request_duration_seconds_bucket", "s"),
        "Requests in progress": ("http_requests_in_progress", "short"),
        "CPU per worker": ("rate(worker_cpu_seconds", "short"),
        "Resident memory per worker": ("worker_resident_memory_bytes", "bytes"),
        "Live / configured workers": ("gunicorn_workers_configured", "short"),
        "Live vs configured workers": ("app_workers_live", "short"),
        "Build info": ("app_build_info", "short"),
        "Pool connections per worker": ("db_pool_connections_max", "short"),
        "Requests waiting for a connection": ("db_pool_waiting_requests", "short"),
        "Pool wait p50 / p99": ("db_pool_wait_seconds_bucket", "s"),
        "Pool timeouts": ("db_pool_timeouts_total", "reqps"),
        "nginx connections": ("nginx_connections_writing", "short"),
        "nginx request rate vs app": ("nginx_http_requests_total", "reqps"),
        "CPU limit per worker": ("worker_cpu_limit_cores", "short"),
        "Worker CPU against its limit": ("/ on (instance, pid)", "percentunit"),
        "Worker CPU per request": ("1000 * sum(rate(worker_cpu_seconds", "ms"),
        "Requests per core of workers": ("/ sum(rate(worker_cpu_seconds", "reqps"),
    }
    found = {panel["title"]: panel for panel in panels()}
    for title, (fragment, unit) in expected.items():
        assert title in found, f"no panel {title!r}"
        exprs = " ".join(target["expr"] for target in found[title]["targets"])
        assert fragment in exprs, f"{title}: does not query {fragment}"
        assert found[title]["fieldConfig"]["defaults"]["unit"] == unit, title
    assert found["Live / configured workers"]["type"] == "stat"
    latency = [target["expr"] for target in found["Latency p50 / p95 / p99 by route"]["targets"]]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({quantile},") for e in latency), quantile
    assert all('route=~"$route"' in e and "by (le, route)" in e for e in latency)
    # Each worker's CPU use over its own limit: the same host and pid on both sides.
    [against] = found["Worker CPU against its limit"]["targets"]
    assert "by (instance, pid) (rate(worker_cpu_seconds" in against["expr"], against["expr"]
    assert (
        "/ on (instance, pid) sum by (instance, pid) (worker_cpu_limit_cores)" in against["expr"]
    ), against["expr"]
    # One line per app host, every route (the total it adds up to has no route filter either).
    [by_host] = found["Request rate by host"]["targets"]
    assert by_host["expr"] == REQUESTS_BY_HOST
    assert by_host["legendFormat"] == "{{instance}}"
    description = found["Request rate by host"]["description"]
    for words in ("On one machine it shows one line", "one line per host", "add up to the total"):
        assert words in description, description


def test_host_lines_add_up_to_the_total() -> None:
    """REQUESTS_BY_HOST is ALL_REQUESTS split by instance: the same rate, summed per host."""
    assert REQUESTS_BY_HOST == "sum by (instance) (rate(http_requests_total[$__rate_interval]))"
    assert REQUESTS_BY_HOST.replace("sum by (instance) (", "sum(") == ALL_REQUESTS
    assert ALL_REQUESTS in [expr for _, _, expr in queries()], "no panel shows the total"


def test_per_worker_queries_split_by_host_and_pid() -> None:
    found = {panel["title"]: panel for panel in panels()}
    for title in sorted(PER_WORKER_PANELS):
        for target in found[title]["targets"]:
            assert "by (instance, pid)" in target["expr"], f"{title}: {target['expr']}"
            assert "{{instance}}" in target["legendFormat"], f"{title}: {target['legendFormat']}"
            assert "{{pid}}" in target["legendFormat"], f"{title}: {target['legendFormat']}"

    # Nowhere a pid without its host: in a label list, or in a legend.
    for panel in panels():
        for target in panel["targets"]:
            where = f"{panel['title']} {target['refId']}"
            for _, labels in GROUPING.findall(target["expr"]):
                names = {name.strip() for name in labels.split(",")}
                assert "pid" not in names or "instance" in names, f"{where}: {target['expr']}"
            legend = target.get("legendFormat", "")
            assert "{{pid}}" not in legend or "{{instance}}" in legend, f"{where}: {legend}"


def test_totals_are_summed_over_hosts() -> None:
    """With several app hosts a total is a sum over `instance`: no max/min/avg across hosts
    stands in for one, but over recording rules (already summed by job) or a health check."""
    found = {panel["title"]: panel for panel in panels()}
    for title in ("Live / configured workers", "Live vs configured workers"):
        exprs = [target["expr"] for target in found[title]["targets"]]
        # max() within a host (old and new master during a reload), then the hosts' sum.
        assert exprs == [
            "sum(max by (instance) (app_workers_live))",
            "sum(max by (instance) (gunicorn_workers_configured))",
        ], title

    # A health check rather than a total: any host's nginx down shows DOWN.
    allowed_names = {"nginx_up"}
    for title, ref_id, expr in queries():
        for _, name in UNGROUPED_EXTREME.findall(expr):
            assert ":" in name or name in allowed_names, f"{title} {ref_id}: {expr}"


# --- provisioning ------------------------------------------------------------------------------


def test_datasource_is_compose_prometheus_with_the_dashboards_uid() -> None:
    config = yaml_file(DATASOURCES)
    assert config["apiVersion"] == 1
    [source] = config["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    assert source["isDefault"] is True
    assert source["access"] == "proxy"
    assert source["url"] == "http://prometheus:9090"

    # The compose service, on the port it listens on, on a network grafana shares.
    services = yaml_file(COMPOSE_FILE)["services"]
    url = urlsplit(source["url"])
    assert url.hostname in services
    assert any(port.endswith(f":{url.port}") for port in services[url.hostname]["ports"])
    assert set(services[url.hostname]["networks"]) & set(services["grafana"]["networks"])

    # $__rate_interval is four of timeInterval: it must be Prometheus's scrape interval.
    scrape_interval = yaml_file(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape_interval

    # The dashboard opens on this data source.
    [variable] = [v for v in dashboard()["templating"]["list"] if v["name"] == "datasource"]
    assert variable["current"]["value"] == source["uid"]


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    assert grafana_mount_target(GRAFANA_DIR / "provisioning") == "/etc/grafana/provisioning"
    dashboards_target = grafana_mount_target(DASHBOARD.parent)

    config = yaml_file(PROVIDERS)
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards_target == "/etc/grafana/dashboards"
    # Grafana reads provisioning/<kind>/*.yml and every *.json under the provider's path.
    assert DATASOURCES.parent.name == "datasources"
    assert PROVIDERS.parent.name == "dashboards"
    assert sorted(path.name for path in DASHBOARD.parent.iterdir()) == [DASHBOARD.name]


# --- every query against the real stack --------------------------------------------------------


def has_a_number(result: list[Series]) -> bool:
    """Whether any sample is a number a panel can draw (a histogram with no requests in the
    window gives NaN: the series is there and the panel is still blank)."""
    return any(math.isfinite(sample.value) for sample in result)


async def load_until_every_query_answers(stack: Stack) -> list[str]:
    """Load the stack until every panel's every query, variables substituted, returns a
    number from its Prometheus (or 80 s pass); the queries that still return none."""
    wanted = [(title, ref_id, substitute(expr)) for title, ref_id, expr in queries()]
    load = Load(stack.url, concurrency=20)
    result = await load.run(total=200)
    assert not result.unexpected(), result.counts()

    # Two scrapes of the load's series, so that rate() over 1m has something to compare.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if await instant_query(stack.prometheus_url, "rate(http_requests_total[1m]) > 0"):
            break
        await asyncio.sleep(1)

    # Then until every query answers, with load running throughout: per-pid series, the
    # recording rules and the exporter's counters each need their own two samples, and the
    # in-progress gauge (sampled each second) requests in flight when a worker samples it;
    # bursts between the checks were over before most samples on a fast host.
    missing: list[str] = []
    deadline = time.monotonic() + 40
    async with background_load(stack.url, concurrency=10) as running:
        while True:
            missing = []
            for title, ref_id, expr in wanted:
                if not has_a_number(await instant_query(stack.prometheus_url, expr)):
                    missing.append(f"{title} [{ref_id}]: {expr}")
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
    assert not running.result.unexpected(), running.result.counts()
    return missing


async def test_every_panel_query_returns_data_from_the_stacks_prometheus(stack: Stack) -> None:
    assert len(queries()) >= 20
    missing = await load_until_every_query_answers(stack)
    assert not missing, "queries with no data:\n" + "\n".join(missing)

    # One machine, one app host: the by-host panel draws a single line, named by its target.
    by_host = await instant_query(stack.prometheus_url, substitute(REQUESTS_BY_HOST))
    assert [set(sample.labels) for sample in by_host] == [{"instance"}], by_host
