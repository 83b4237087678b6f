"""The "Notes stack" Grafana dashboard, generated: deploy/grafana/dashboards/notes.json.

    python -m deploy.grafana.dashboard                  write dashboards/notes.json
    python -m deploy.grafana.dashboard --check          exit 1 if the committed file differs
    python -m deploy.grafana.dashboard --output PATH    write somewhere else (- for stdout)

`make dashboard` regenerates it and checks the result.

Edit this file, never the JSON: the JSON is written with sorted keys, ids numbered in layout
order and positions computed from each row's panel widths, so that regenerating it is
byte-identical and a review of this file is a review of the dashboard. Standard library only.

Every query reads the metrics of docs/observability.md or the recording rules of
deploy/prometheus/rules/notes.yml; tests/deploy/grafana/test_dashboard.py runs each of them
against a real Prometheus scraping a loaded stack and fails on any that returns nothing.
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "notes.json"

Json = dict[str, Any]

UID = "notes-stack"
TITLE = "Notes stack"
SCHEMA_VERSION = 39
GRID_WIDTH = 24
# Every query goes to the data source the `datasource` variable picks (provisioned: uid
# prometheus, see provisioning/datasources/prometheus.yml).
DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
# The `route` variable's matcher; its "All" value is `.*`, so `=~` keeps every route.
ROUTE = 'route=~"$route"'
# Grafana's rate window: at least four scrape intervals (the data source's timeInterval, 5s).
RATE = "$__rate_interval"

# Threshold colours.
GREEN = "green"
ORANGE = "orange"
RED = "red"


# --- building blocks ---------------------------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Json:
    """One PromQL query of a panel (its refId is set when the panel is built)."""
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
    }


def thresholds(*steps: tuple[float | None, str]) -> Json:
    """Absolute thresholds: (None, base colour), then (value, colour) from that value up."""
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


def overrides_by_name(pattern: str, properties: dict[str, Any]) -> Json:
    """Field config for the series whose display name matches the regex `pattern`."""
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [{"id": key, "value": value} for key, value in sorted(properties.items())],
    }


def dashed(pattern: str) -> Json:
    """Draw the series matching `pattern` as an unfilled dashed line (a limit, a total)."""
    return overrides_by_name(
        pattern, {"custom.fillOpacity": 0, "custom.lineStyle": {"dash": [10, 10], "fill": "dash"}}
    )


@dataclass
class Panel:
    """A panel before layout: its size is known, its id and position are not."""

    body: Json
    width: int
    height: int


def panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    targets: list[Json],
    *,
    width: int = 12,
    height: int = 8,
    defaults: Json | None = None,
    options: Json | None = None,
    overrides: list[Json] | None = None,
    transformations: list[Json] | None = None,
) -> Panel:
    """Any panel with queries: `kind` is the Grafana panel type, `unit` a Grafana unit id."""
    for number, query in enumerate(targets):
        query["refId"] = chr(ord("A") + number)
    body: Json = {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {
            "defaults": {"unit": unit, **(defaults or {})},
            "overrides": overrides or [],
        },
        "options": options or {},
        "targets": targets,
        "title": title,
        "type": kind,
    }
    if transformations:
        body["transformations"] = transformations
    return Panel(body, width, height)


def timeseries(
    title: str,
    description: str,
    unit: str,
    targets: list[Json],
    *,
    width: int = 12,
    height: int = 8,
    minimum: float | None = 0,
    threshold: float | None = None,
    axis_label: str = "",
    stack: bool = False,
    overrides: list[Json] | None = None,
) -> Panel:
    """Lines over time, with a legend table (mean, max, last) and a shared tooltip.

    `threshold` draws a dashed red line where an alert fires; `stack` stacks the series."""
    custom: Json = {
        "axisLabel": axis_label,
        "drawStyle": "line",
        "fillOpacity": 25 if stack else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": "dashed" if threshold is not None else "off"},
    }
    defaults: Json = {"color": {"mode": "palette-classic"}, "custom": custom}
    if minimum is not None:
        defaults["min"] = minimum
    if threshold is not None:
        defaults["thresholds"] = thresholds((None, GREEN), (threshold, RED))
    options = {
        "legend": {
            "calcs": ["mean", "max", "lastNotNull"],
            "displayMode": "table",
            "placement": "bottom",
            "showLegend": True,
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel(
        "timeseries",
        title,
        description,
        unit,
        targets,
        width=width,
        height=height,
        defaults=defaults,
        options=options,
        overrides=overrides,
    )


def stat(
    title: str,
    description: str,
    unit: str,
    targets: list[Json],
    *,
    steps: Json,
    width: int = 6,
    height: int = 8,
    mappings: list[Json] | None = None,
    decimals: int | None = None,
) -> Panel:
    """The last value of each query, coloured by `steps` (see `thresholds`)."""
    defaults: Json = {"color": {"mode": "thresholds"}, "thresholds": steps}
    if mappings:
        defaults["mappings"] = mappings
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showPercentChange": False,
        "textMode": "value_and_name",
        "wideLayout": True,
    }
    return panel(
        "stat",
        title,
        description,
        unit,
        targets,
        width=width,
        height=height,
        defaults=defaults,
        options=options,
    )


def table(
    title: str,
    description: str,
    targets: list[Json],
    *,
    hide: list[str],
    rename: dict[str, str],
    width: int = 8,
    height: int = 8,
) -> Panel:
    """Instant query results as rows: label columns, renamed; `hide` drops columns."""
    organize = {
        "id": "organize",
        "options": {
            "excludeByName": dict.fromkeys(hide, True),
            "indexByName": {},
            "renameByName": rename,
        },
    }
    options = {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True}
    return panel(
        "table",
        title,
        description,
        "short",
        targets,
        width=width,
        height=height,
        options=options,
        transformations=[organize],
    )


@dataclass
class Row:
    """A dashboard row (never collapsed) and the panels under it, laid out left to right."""

    title: str
    panels: list[Panel] = field(default_factory=list)


def layout(rows: list[Row]) -> list[Json]:
    """Every row and panel with ids numbered in order and gridPos filling 24 columns."""
    placed: list[Json] = []
    y = 0
    for row in rows:
        placed.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "id": len(placed) + 1,
                "panels": [],
                "title": row.title,
                "type": "row",
            }
        )
        y += 1
        x, line_height = 0, 0
        for item in row.panels:
            if not 0 < item.width <= GRID_WIDTH:
                raise ValueError(f"{item.body['title']}: width {item.width}")
            if x + item.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            gridpos = {"h": item.height, "w": item.width, "x": x, "y": y}
            placed.append({**item.body, "gridPos": gridpos, "id": len(placed) + 1})
            x += item.width
            line_height = max(line_height, item.height)
        y += line_height
    return placed


# --- the panels --------------------------------------------------------------------------------


def traffic() -> Row:
    requests = f"rate(http_requests_total{{{ROUTE}}}[{RATE}])"
    errors = f'rate(http_requests_total{{{ROUTE}, status=~"5.."}}[{RATE}])'
    return Row(
        "Traffic",
        [
            timeseries(
                "Request rate by route and status",
                "Requests per second the app answered, by route template and HTTP status, "
                "summed over every gunicorn worker (live and exited). Includes Prometheus's "
                "own scrapes of /metrics; requests nginx answers itself are in the nginx row.",
                "reqps",
                [target(f"sum by (route, status) ({requests})", "{{route}} {{status}}")],
                stack=True,
            ),
            timeseries(
                "Error ratio (5xx / all)",
                "The share of the selected routes' requests answered with a 5xx status (0 "
                "while nothing fails: there is no 5xx series until the first one). The "
                "second line is the recorded 5m ratio over every route, which the "
                "HighErrorRatio alert reads: it fires above the dashed line (5%) for 5m.",
                "percentunit",
                [
                    target(
                        f"(sum({errors}) or vector(0)) / sum({requests})",
                        "5xx ratio, selected routes",
                    ),
                    target("max(job:http_requests_5xx:ratio_rate5m)", "5xx ratio, 5m (alert)"),
                ],
                width=6,
                threshold=0.05,
            ),
            timeseries(
                "Requests in progress",
                "Requests the live workers are serving at the moment of the scrape, by "
                "route. /metrics shows 1: the scrape counts itself. A route that keeps "
                "growing here is slower than its arrival rate.",
                "short",
                [target(f"sum by (route) (http_requests_in_progress{{{ROUTE}}})", "{{route}}")],
                width=6,
            ),
        ],
    )


def latency() -> Row:
    buckets = f"sum by (le, route) (rate(http_request_duration_seconds_bucket{{{ROUTE}}}[{RATE}]))"
    return Row(
        "Latency",
        [
            timeseries(
                "Latency p50 / p95 / p99 by route",
                "Quantiles estimated from the http_request_duration_seconds histogram "
                "(buckets 0.5 ms … 10 s): from the request reaching the app to its response "
                "sent, nginx's own time excluded. A route without requests in the window has "
                "no point.",
                "s",
                [
                    target(f"histogram_quantile({q}, {buckets})", f"p{p} {{{{route}}}}")
                    for q, p in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
                ],
                width=18,
                height=9,
                threshold=0.5,
            ),
            stat(
                "Slowest route p99 (5m)",
                "The highest recorded 5m p99 among the selected routes "
                "(route:http_request_duration_seconds:p99_5m). HighLatencyP99 fires when a "
                "route with more than 0.5 requests/s stays above 500 ms for 10m.",
                "s",
                [
                    target(
                        f"max(route:http_request_duration_seconds:p99_5m{{{ROUTE}}})",
                        "slowest route p99",
                    )
                ],
                steps=thresholds((None, GREEN), (0.25, ORANGE), (0.5, RED)),
                height=9,
            ),
        ],
    )


def workers() -> Row:
    # max(): during a reload the old and the new gunicorn master both report their count.
    live = target("max(app_workers_live)", "live")
    configured = target("max(gunicorn_workers_configured)", "configured")
    return Row(
        "Workers",
        [
            stat(
                "Live / configured workers",
                "Workers serving now, and the count gunicorn is configured for (make scale "
                "changes it). Live below configured means workers crash or fail to boot "
                "(WorkersBelowConfigured alert, after 2m).",
                "short",
                [live, configured],
                steps=thresholds((None, RED), (1, GREEN)),
                width=6,
                decimals=0,
            ),
            timeseries(
                "Live vs configured workers",
                "The two counts over time: a dip in live workers is a crash or a recycle "
                "(max_requests); both move together on make scale.",
                "short",
                [
                    target("max(app_workers_live)", "live"),
                    target("max(gunicorn_workers_configured)", "configured"),
                ],
                width=10,
                overrides=[dashed("^configured$")],
            ),
            table(
                "Build info",
                "The version and Python of the running app (app_build_info). Two rows "
                "during a reload that changes the code: old and new workers both serve.",
                [
                    target(
                        "max by (version, python_version) (app_build_info)",
                        instant=True,
                        table=True,
                    )
                ],
                hide=["Time", "Value"],
                rename={"python_version": "Python", "version": "Version"},
            ),
            timeseries(
                "CPU per worker",
                "CPU each worker uses, user + system, in cores (1 = one core busy): "
                "rate() of worker_cpu_seconds, by pid. A worker near 1 is CPU-bound: its "
                "event loop delays every request it holds.",
                "short",
                [target(f"sum by (pid) (rate(worker_cpu_seconds[{RATE}]))", "pid {{pid}}")],
                axis_label="cores",
            ),
            timeseries(
                "Resident memory per worker",
                "Each worker's resident set size, by pid. Steady growth under steady load is "
                "a leak; max_requests recycling resets it.",
                "bytes",
                [target("sum by (pid) (worker_resident_memory_bytes)", "pid {{pid}}")],
            ),
        ],
    )


def database_pool() -> Row:
    def per_worker(metric: str, name: str) -> Json:
        return target(f"sum by (pid) ({metric})", f"{name} {{{{pid}}}}")

    wait = f"sum by (le) (rate(db_pool_wait_seconds_bucket[{RATE}]))"
    return Row(
        "Database pool",
        [
            timeseries(
                "Pool connections per worker",
                "Each worker's SQLAlchemy pool, by pid: connections its requests hold (in "
                "use), open and idle, held beyond DB_POOL_SIZE (overflow), and its ceiling "
                "(max = DB_POOL_SIZE + DB_MAX_OVERFLOW, dashed). In use at max means "
                "requests queue for a connection.",
                "short",
                [
                    per_worker("db_pool_connections_in_use", "in use"),
                    per_worker("db_pool_connections_idle", "idle"),
                    per_worker("db_pool_connections_overflow", "overflow"),
                    per_worker("db_pool_connections_max", "max"),
                ],
                overrides=[dashed("^max ")],
            ),
            stat(
                "Pool utilization",
                "Connections in use over the pools' combined maximum, every worker "
                "(job:db_pool_utilization:ratio). DatabasePoolSaturated fires above 90% "
                "for 5m.",
                "percentunit",
                [target("max(job:db_pool_utilization:ratio)", "in use / max")],
                steps=thresholds((None, GREEN), (0.7, ORANGE), (0.9, RED)),
                width=4,
            ),
            timeseries(
                "Requests waiting for a connection",
                "Requests queued for a pooled connection right now, by worker. Anything "
                "above 0 for long means the pool is too small for the load "
                "(DatabasePoolSaturated, after 5m).",
                "short",
                [per_worker("db_pool_waiting_requests", "waiting")],
                width=8,
            ),
            timeseries(
                "Pool wait p50 / p99",
                "How long requests waited to get a connection, from the db_pool_wait_seconds "
                "histogram over every worker. Near zero while the pool has idle connections.",
                "s",
                [
                    target(f"histogram_quantile(0.5, {wait})", "p50"),
                    target(f"histogram_quantile(0.99, {wait})", "p99"),
                ],
            ),
            timeseries(
                "Pool timeouts",
                "Requests per second that got no connection within DB_POOL_TIMEOUT and were "
                "answered 503 (db_pool_timeouts_total). Should be 0; any is a failed request "
                "(DatabasePoolTimeouts alert).",
                "reqps",
                [target(f"sum(rate(db_pool_timeouts_total[{RATE}]))", "timeouts")],
            ),
        ],
    )


def nginx() -> Row:
    def connections(state: str) -> Json:
        return target(f"sum(nginx_connections_{state})", state)

    return Row(
        "nginx",
        [
            timeseries(
                "nginx connections",
                "Client connections nginx holds (stub_status via the exporter): active is "
                "reading + writing + waiting. Reading: receiving a request; writing: "
                "answering (or waiting on the app); waiting: idle keep-alive.",
                "short",
                [connections(state) for state in ("active", "reading", "writing", "waiting")],
                overrides=[dashed("^active$")],
            ),
            timeseries(
                "nginx request rate vs app",
                "Requests per second nginx handled on every server (nginx_http_requests_total, "
                "stub_status included) next to those the app answered. The gap is what nginx "
                "answered itself: stub_status, errors, 502/504 when the app does not answer.",
                "reqps",
                [
                    target(f"sum(rate(nginx_http_requests_total[{RATE}]))", "nginx"),
                    target(f"sum(rate(http_requests_total[{RATE}]))", "app"),
                ],
            ),
            stat(
                "nginx up",
                "Whether the exporter can read nginx's stub_status (nginx_up). Down for 1m "
                "fires NginxDown.",
                "short",
                [target("min(nginx_up)", "nginx")],
                steps=thresholds((None, RED), (1, GREEN)),
                width=4,
                height=6,
                mappings=[
                    {
                        "options": {
                            "0": {"index": 0, "text": "DOWN"},
                            "1": {"index": 1, "text": "UP"},
                        },
                        "type": "value",
                    }
                ],
            ),
            timeseries(
                "nginx connections accepted vs handled",
                "New client connections per second. Handled below accepted means nginx "
                "dropped connections (worker_connections exhausted).",
                "short",
                [
                    target(f"sum(rate(nginx_connections_accepted[{RATE}]))", "accepted"),
                    target(f"sum(rate(nginx_connections_handled[{RATE}]))", "handled"),
                ],
                axis_label="connections/s",
                width=20,
                height=6,
            ),
        ],
    )


def variables() -> list[Json]:
    route_query = "label_values(http_requests_total, route)"
    return [
        {
            "current": {"text": "Prometheus", "value": "prometheus"},
            "hide": 0,
            "includeAll": False,
            "label": "Data source",
            "multi": False,
            "name": "datasource",
            "options": [],
            "query": "prometheus",
            "refresh": 1,
            "regex": "",
            "skipUrlSync": False,
            "type": "datasource",
        },
        {
            # `.*` rather than Grafana's default (every current value, OR-ed): shorter
            # queries, and routes that appear after the page loaded are included.
            "allValue": ".*",
            "current": {"text": ["All"], "value": ["$__all"]},
            "datasource": DATASOURCE,
            "definition": route_query,
            "hide": 0,
            "includeAll": True,
            "label": "Route",
            "multi": True,
            "name": "route",
            "options": [],
            "query": route_query,
            # 2: on time range change, so new routes show up without a reload.
            "refresh": 2,
            "regex": "",
            "skipUrlSync": False,
            "sort": 1,
            "type": "query",
        },
    ]


def dashboard() -> Json:
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": (
            "nginx -> gunicorn (uvicorn workers) -> PostgreSQL: traffic, latency, workers, "
            "database pools and nginx, from Prometheus. Generated by "
            "deploy/grafana/dashboard.py; edit that, not this JSON."
        ),
        "editable": True,
        "fiscalYearStartMonth": 0,
        # 1: shared crosshair across panels.
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": layout([traffic(), latency(), workers(), database_pool(), nginx()]),
        "refresh": "5s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["notes", "nginx", "gunicorn", "postgresql"],
        "templating": {"list": variables()},
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m", "15m"]},
        "timezone": "browser",
        "title": TITLE,
        "uid": UID,
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    """The dashboard as the committed file holds it."""
    return json.dumps(dashboard(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Write the {TITLE!r} Grafana dashboard.")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if {OUTPUT.name} is not what this writes"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write (- for stdout)")
    args = parser.parse_args(argv)
    text = render()
    output: Path = args.output
    if args.check:
        try:
            current = output.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            print(
                f"{output} is out of date: run `make dashboard` "
                "(python -m deploy.grafana.dashboard) to regenerate it",
                file=sys.stderr,
            )
            return 1
        return 0
    if str(output) == "-":
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
