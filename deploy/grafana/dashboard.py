"""The "Notes stack" Grafana dashboard, generated: deploy/grafana/dashboards/notes.json.

    python -m deploy.grafana.dashboard                  write dashboards/notes.json
    python -m deploy.grafana.dashboard --check          exit 1 if the committed file differs
    python -m deploy.grafana.dashboard --output PATH    write somewhere else (- for stdout)

`make dashboard` regenerates it and checks the result.

Edit this file, never the JSON. Panels, queries and variables are built with Grafana's typed
builders (grafana-foundation-sdk, generated from Grafana 11.6's schemas; pinned exactly in
pyproject.toml, since a newer build may write other defaults), and the JSON is written with
sorted keys and ids numbered in layout order, so that regenerating it is byte-identical and a
review of this file is a review of the dashboard.

Where the SDK falls short, and what this file does about it:
- It numbers nothing (a row gets id 0, a panel none): `assemble` gives every row and panel
  its id, in layout order, with the builders' own `.id()`.
- Its layout (`Dashboard.with_row` / `with_panel`) puts panels left to right and starts a new
  line only once 24 columns are full: a panel that does not fit the rest of a line overflows
  it rather than wrapping. So every line of a row but its last fills the 24 columns, and
  `assemble` refuses a panel that overflows.
- It omits a dashboard's `id` when unset rather than writing null; for a provisioned
  dashboard the two mean the same (no database id).
- `QueryVariable` has no `definition` (the text Grafana's variable list shows): the list
  shows the query itself, which is the same string.
- `Row.with_panel` nests panels inside the row and collapses it; this dashboard's rows are
  open, so panels are added to the dashboard after their row, as Grafana saves open rows.

Every query reads the metrics of docs/observability.md or the recording rules of
deploy/prometheus/rules/notes.yml; tests/deploy/grafana/test_dashboard.py runs each of them
against a real Prometheus scraping a loaded stack and fails on any that returns nothing.

Several app hosts (each a gunicorn master with its own metrics directory) are separate scrape
targets, so their series differ by `instance`. Totals are summed over it (`sum(...)` without
`by`); per-worker series split `by (instance, pid)`, since pids repeat across hosts; and a
count each host reports once (live and configured workers) is taken per host, then summed.
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import TypeVar

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    BigValueJustifyMode,
    BigValueTextMode,
    GraphDrawStyle,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    StackingMode,
    TableCellHeight,
    TooltipDisplayMode,
    VisibilityMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    FieldColorModeId,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableModel,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "notes.json"

# STACK_NAME's default; another name gets its own title, uid and file (--name).
NAME = "notes"
UID = f"{NAME}-stack"
TITLE = "Notes stack"
GRID_WIDTH = 24
# Every query goes to the data source the `datasource` variable picks (provisioned: uid
# prometheus, see provisioning/datasources/prometheus.yml).
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The `route` variable's matcher; its "All" value is `.*`, so `=~` keeps every route.
ROUTE = 'route=~"$route"'
# Grafana's rate window: at least four scrape intervals (the data source's timeInterval, 5s).
RATE = "$__rate_interval"
# A worker is a pid on a host: pids repeat across app hosts (scrape targets, `instance`).
PER_WORKER = "instance, pid"
PER_WORKER_LEGEND = "{{instance}} pid {{pid}}"
# CPU each worker uses, in cores (1 = one core busy), per worker: its CPU gauge only grows.
WORKER_CPU = f"sum by ({PER_WORKER}) (rate(worker_cpu_seconds[{RATE}]))"
ALL_WORKERS_CPU = f"sum(rate(worker_cpu_seconds[{RATE}]))"
# Every request the app answered, every route and host; REQUESTS_BY_HOST adds up to it.
ALL_REQUESTS = f"sum(rate(http_requests_total[{RATE}]))"
REQUESTS_BY_HOST = f"sum by (instance) (rate(http_requests_total[{RATE}]))"

# Threshold colours.
GREEN = "green"
ORANGE = "orange"
RED = "red"

AnyPanel = timeseries.Panel | stat.Panel | table.Panel
PanelT = TypeVar("PanelT", timeseries.Panel, stat.Panel, table.Panel)


# --- building blocks ---------------------------------------------------------------------------


def query(
    expr: str, legend: str = "", *, instant: bool = False, as_table: bool = False
) -> prometheus.Dataquery:
    """One PromQL query of a panel (its refId is set when the panel is built)."""
    built = (
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .editor_mode(QueryEditorMode.CODE)
        .expr(expr)
        .format(PromQueryFormat.TABLE if as_table else PromQueryFormat.TIME_SERIES)
        .legend_format(legend or "__auto")
    )
    return built.instant() if instant else built.range()


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    """Absolute thresholds: (None, base colour), then (value, colour) from that value up."""
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def dashed() -> list[DynamicConfigValue]:
    """Field config that draws a series as an unfilled dashed line (a limit, a total)."""
    return [
        DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        DynamicConfigValue(id_val="custom.lineStyle", value={"dash": [10, 10], "fill": "dash"}),
    ]


def panel(
    kind: PanelT,
    title: str,
    description: str,
    unit: str,
    queries: list[prometheus.Dataquery],
    *,
    width: int,
    height: int,
) -> PanelT:
    """What every panel has: title, description, unit, size, queries (refIds A, B, ...)."""
    for number, each in enumerate(queries):
        kind.with_target(each.ref_id(chr(ord("A") + number)))
    return (
        kind.title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
    )


def lines(
    title: str,
    description: str,
    unit: str,
    queries: list[prometheus.Dataquery],
    *,
    width: int = 12,
    height: int = 8,
    minimum: float | None = 0,
    threshold: float | None = None,
    axis_label: str = "",
    stack: bool = False,
    dashed_series: str | None = None,
) -> timeseries.Panel:
    """Lines over time, with a legend table (mean, max, last) and a shared tooltip.

    `threshold` draws a dashed red line from that value up (where an alert fires, or a limit);
    `stack` stacks the series; `dashed_series` (a regex of series names) draws those dashed."""
    threshold_style = GraphThresholdsStyleMode.OFF
    if threshold is not None:
        threshold_style = GraphThresholdsStyleMode.DASHED
    built = (
        panel(timeseries.Panel(), title, description, unit, queries, width=width, height=height)
        .color_scheme(dashboard.FieldColor().mode(FieldColorModeId.PALETTE_CLASSIC))
        .axis_label(axis_label)
        .draw_style(GraphDrawStyle.LINE)
        .fill_opacity(25 if stack else 10)
        .line_width(1)
        .show_points(VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            common.StackingConfig()
            .group("A")
            .mode(StackingMode.NORMAL if stack else StackingMode.NONE)
        )
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(threshold_style))
        .legend(
            common.VizLegendOptions()
            .calcs(["mean", "max", "lastNotNull"])
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)
        )
    )
    if minimum is not None:
        built.min(minimum)
    if threshold is not None:
        built.thresholds(thresholds((None, GREEN), (threshold, RED)))
    if dashed_series is not None:
        built.override_by_regexp(dashed_series, dashed())
    return built


def number(
    title: str,
    description: str,
    unit: str,
    queries: list[prometheus.Dataquery],
    *,
    steps: dashboard.ThresholdsConfig,
    width: int = 6,
    height: int = 8,
    mappings: dict[str, str] | None = None,
    decimals: int | None = None,
) -> stat.Panel:
    """The last value of each query, coloured by `steps` (see `thresholds`); `mappings`
    shows a value (its text) as a word."""
    built = (
        panel(stat.Panel(), title, description, unit, queries, width=width, height=height)
        .color_scheme(dashboard.FieldColor().mode(FieldColorModeId.THRESHOLDS))
        .thresholds(steps)
        .color_mode(BigValueColorMode.VALUE)
        .graph_mode(BigValueGraphMode.AREA)
        .justify_mode(BigValueJustifyMode.AUTO)
        .orientation(VizOrientation.AUTO)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .show_percent_change(False)
        .text_mode(BigValueTextMode.VALUE_AND_NAME)
        .wide_layout(True)
    )
    if mappings:
        words = {
            value: ValueMappingResult(text=text, index=index)
            for index, (value, text) in enumerate(mappings.items())
        }
        built.mappings([ValueMap(options=words)])
    if decimals is not None:
        built.decimals(decimals)
    return built


def rows_table(
    title: str,
    description: str,
    queries: list[prometheus.Dataquery],
    *,
    hide: list[str],
    rename: dict[str, str],
    width: int = 8,
    height: int = 8,
) -> table.Panel:
    """Instant query results as rows: label columns, renamed; `hide` drops columns."""
    organize = DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(hide, True),
            "indexByName": {},
            "renameByName": rename,
        },
    )
    return (
        panel(table.Panel(), title, description, "short", queries, width=width, height=height)
        .cell_height(TableCellHeight.SM)
        .footer(common.TableFooterOptions().show(False))
        .show_header(True)
        .with_transformation(organize)
    )


@dataclass
class Row:
    """A dashboard row (never collapsed) and the panels under it, laid out left to right."""

    title: str
    panels: list[AnyPanel] = field(default_factory=list)


def assemble(board: dashboard.Dashboard, rows: list[Row]) -> dashboard.Dashboard:
    """Every row, then its panels, with ids numbered in layout order (the SDK places them)."""
    ids = count(1)
    for row in rows:
        board.with_row(dashboard.Row(row.title).id(next(ids)))
        for each in row.panels:
            board.with_panel(each.id(next(ids)))
            place = each.build().grid_pos
            if place is None or place.x + place.w > GRID_WIDTH:
                msg = f"{row.title}: {each.build().title} overflows the {GRID_WIDTH} columns"
                raise ValueError(msg)
    return board


# --- the panels --------------------------------------------------------------------------------


def traffic() -> Row:
    requests = f"rate(http_requests_total{{{ROUTE}}}[{RATE}])"
    errors = f'rate(http_requests_total{{{ROUTE}, status=~"5.."}}[{RATE}])'
    return Row(
        "Traffic",
        [
            lines(
                "Request rate by route and status",
                "Requests per second the app answered, by route template and HTTP status, "
                "summed over every gunicorn worker (live and exited). Includes Prometheus's "
                "own scrapes of /metrics; requests nginx answers itself are in the nginx row.",
                "reqps",
                [query(f"sum by (route, status) ({requests})", "{{route}} {{status}}")],
                stack=True,
            ),
            lines(
                "Request rate by host",
                "Requests per second the app answered on each app host (Prometheus's instance "
                "label: each host's gunicorn is a scrape target of its own), every route "
                "whatever the Route variable selects. On one machine it shows one line; with "
                "several app hosts, one line per host, and they add up to the total: the app "
                "line of nginx request rate vs app, and the top of the stacked request rate "
                "by route and status with every route selected. A host far above the others "
                "gets more than its share from the load balancer.",
                "reqps",
                [query(REQUESTS_BY_HOST, "{{instance}}")],
            ),
            lines(
                "Error ratio (5xx / all)",
                "The share of the selected routes' requests answered with a 5xx status (0 "
                "while nothing fails: there is no 5xx series until the first one). The "
                "second line is the recorded 5m ratio over every route, which the "
                "HighErrorRatio alert reads: it fires above the dashed line (5%) for 5m.",
                "percentunit",
                [
                    query(
                        f"(sum({errors}) or vector(0)) / sum({requests})",
                        "5xx ratio, selected routes",
                    ),
                    query("max(job:http_requests_5xx:ratio_rate5m)", "5xx ratio, 5m (alert)"),
                ],
                threshold=0.05,
            ),
            lines(
                "Requests in progress",
                "Requests the live workers are serving at the moment of the scrape, by "
                "route. /metrics shows 1: the scrape counts itself. A route that keeps "
                "growing here is slower than its arrival rate.",
                "short",
                [query(f"sum by (route) (http_requests_in_progress{{{ROUTE}}})", "{{route}}")],
            ),
        ],
    )


def latency() -> Row:
    buckets = f"sum by (le, route) (rate(http_request_duration_seconds_bucket{{{ROUTE}}}[{RATE}]))"
    return Row(
        "Latency",
        [
            lines(
                "Latency p50 / p95 / p99 by route",
                "Quantiles estimated from the http_request_duration_seconds histogram "
                "(buckets 0.5 ms … 10 s): from the request reaching the app to its response "
                "sent, nginx's own time excluded. A route without requests in the window has "
                "no point.",
                "s",
                [
                    query(f"histogram_quantile({q}, {buckets})", f"p{p} {{{{route}}}}")
                    for q, p in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
                ],
                width=18,
                height=9,
                threshold=0.5,
            ),
            number(
                "Slowest route p99 (5m)",
                "The highest recorded 5m p99 among the selected routes "
                "(route:http_request_duration_seconds:p99_5m). HighLatencyP99 fires when a "
                "route with more than 0.5 requests/s stays above 500 ms for 10m.",
                "s",
                [
                    query(
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
    # Each host's count, then their sum: max() per host, because during a reload the old
    # and the new gunicorn master both report theirs.
    def counts() -> list[prometheus.Dataquery]:
        return [
            query("sum(max by (instance) (app_workers_live))", "live"),
            query("sum(max by (instance) (gunicorn_workers_configured))", "configured"),
        ]

    memory = "worker_resident_memory_bytes"
    return Row(
        "Workers",
        [
            number(
                "Live / configured workers",
                "Workers serving now, and the count gunicorn is configured for (make scale "
                "changes it), summed over the app hosts. Live below configured means workers "
                "crash or fail to boot (WorkersBelowConfigured alert, after 2m).",
                "short",
                counts(),
                steps=thresholds((None, RED), (1, GREEN)),
                decimals=0,
            ),
            lines(
                "Live vs configured workers",
                "The two counts over time, summed over the app hosts: a dip in live workers "
                "is a crash or a recycle (max_requests); both move together on make scale.",
                "short",
                counts(),
                width=10,
                dashed_series="^configured$",
            ),
            rows_table(
                "Build info",
                "The version and Python of the running app (app_build_info), over every app "
                "host. Two rows during a reload that changes the code (old and new workers "
                "both serve), or while the hosts run different builds.",
                [
                    query(
                        "max by (version, python_version) (app_build_info)",
                        instant=True,
                        as_table=True,
                    )
                ],
                hide=["Time", "Value"],
                rename={"python_version": "Python", "version": "Version"},
            ),
            lines(
                "CPU per worker",
                "CPU each worker uses, user + system, in cores (1 = one core busy): "
                "rate() of worker_cpu_seconds, by host (instance) and pid. A worker near 1 is "
                "CPU-bound: its event loop delays every request it holds.",
                "short",
                [query(WORKER_CPU, PER_WORKER_LEGEND)],
                axis_label="cores",
            ),
            lines(
                "Resident memory per worker",
                "Each worker's resident set size, by host (instance) and pid. Steady growth "
                "under steady load is a leak; max_requests recycling resets it.",
                "bytes",
                [query(f"sum by ({PER_WORKER}) ({memory})", PER_WORKER_LEGEND)],
            ),
        ],
    )


def database_pool() -> Row:
    def per_worker(metric: str, name: str) -> prometheus.Dataquery:
        return query(f"sum by ({PER_WORKER}) ({metric})", f"{name} {PER_WORKER_LEGEND}")

    wait = f"sum by (le) (rate(db_pool_wait_seconds_bucket[{RATE}]))"
    return Row(
        "Database pool",
        [
            lines(
                "Pool connections per worker",
                "Each worker's SQLAlchemy pool, by host (instance) and pid: connections its "
                "requests hold (in use), open and idle, held beyond DB_POOL_SIZE (overflow), "
                "and its ceiling (max = DB_POOL_SIZE + DB_MAX_OVERFLOW, dashed). In use at "
                "max means requests queue for a connection.",
                "short",
                [
                    per_worker("db_pool_connections_in_use", "in use"),
                    per_worker("db_pool_connections_idle", "idle"),
                    per_worker("db_pool_connections_overflow", "overflow"),
                    per_worker("db_pool_connections_max", "max"),
                ],
                dashed_series="^max ",
            ),
            number(
                "Pool utilization",
                "Connections in use over the pools' combined maximum, every worker "
                "(job:db_pool_utilization:ratio). DatabasePoolSaturated fires above 90% "
                "for 5m.",
                "percentunit",
                [query("max(job:db_pool_utilization:ratio)", "in use / max")],
                steps=thresholds((None, GREEN), (0.7, ORANGE), (0.9, RED)),
                width=4,
            ),
            lines(
                "Requests waiting for a connection",
                "Requests queued for a pooled connection right now, by worker (host and "
                "pid). Anything above 0 for long means the pool is too small for the load "
                "(DatabasePoolSaturated, after 5m).",
                "short",
                [per_worker("db_pool_waiting_requests", "waiting")],
                width=8,
            ),
            lines(
                "Pool wait p50 / p99",
                "How long requests waited to get a connection, from the db_pool_wait_seconds "
                "histogram over every worker. Near zero while the pool has idle connections.",
                "s",
                [
                    query(f"histogram_quantile(0.5, {wait})", "p50"),
                    query(f"histogram_quantile(0.99, {wait})", "p99"),
                ],
            ),
            lines(
                "Pool timeouts",
                "Requests per second that got no connection within DB_POOL_TIMEOUT and were "
                "answered 503 (db_pool_timeouts_total). Should be 0; any is a failed request "
                "(DatabasePoolTimeouts alert).",
                "reqps",
                [query(f"sum(rate(db_pool_timeouts_total[{RATE}]))", "timeouts")],
            ),
        ],
    )


def nginx() -> Row:
    def connections(state: str) -> prometheus.Dataquery:
        return query(f"sum(nginx_connections_{state})", state)

    return Row(
        "nginx",
        [
            lines(
                "nginx connections",
                "Client connections nginx holds (stub_status via the exporter): active is "
                "reading + writing + waiting. Reading: receiving a request; writing: "
                "answering (or waiting on the app); waiting: idle keep-alive.",
                "short",
                [connections(state) for state in ("active", "reading", "writing", "waiting")],
                dashed_series="^active$",
            ),
            lines(
                "nginx request rate vs app",
                "Requests per second nginx handled on every server (nginx_http_requests_total, "
                "stub_status included) next to those the app answered. The gap is what nginx "
                "answered itself: stub_status, errors, 502/504 when the app does not answer.",
                "reqps",
                [
                    query(f"sum(rate(nginx_http_requests_total[{RATE}]))", "nginx"),
                    query(ALL_REQUESTS, "app"),
                ],
            ),
            number(
                "nginx up",
                "Whether the exporter can read nginx's stub_status (nginx_up). Down for 1m "
                "fires NginxDown.",
                "short",
                [query("min(nginx_up)", "nginx")],
                steps=thresholds((None, RED), (1, GREEN)),
                width=4,
                height=6,
                mappings={"0": "DOWN", "1": "UP"},
            ),
            lines(
                "nginx connections accepted vs handled",
                "New client connections per second. Handled below accepted means nginx "
                "dropped connections (worker_connections exhausted).",
                "short",
                [
                    query(f"sum(rate(nginx_connections_accepted[{RATE}]))", "accepted"),
                    query(f"sum(rate(nginx_connections_handled[{RATE}]))", "handled"),
                ],
                axis_label="connections/s",
                width=20,
                height=6,
            ),
        ],
    )


def scaling_lab() -> Row:
    # Every route, whatever `$route` selects: CPU is spent on all of them.
    limit = f"sum by ({PER_WORKER}) (worker_cpu_limit_cores)"
    return Row(
        "Scaling lab and capacity",
        [
            lines(
                "CPU limit per worker",
                "The most CPU each worker may use, in cores, by host (instance) and pid "
                "(worker_cpu_limit_cores): its cgroup's CPU quota (make sweep "
                "CPU_PER_WORKER=0.2 gives 0.2), or the CPUs it may run on when it has no "
                "quota. Compare it with CPU per worker: the next panel divides one by the "
                "other.",
                "short",
                [query(limit, PER_WORKER_LEGEND)],
                width=8,
                axis_label="cores",
            ),
            lines(
                "Worker CPU against its limit",
                "Each worker's CPU use over its CPU limit, by host (instance) and pid (rate "
                "of worker_cpu_seconds / worker_cpu_limit_cores). Near 100% the worker is at "
                "its ceiling (throttled under a quota): latency grows while throughput stays "
                "flat, so more workers or cores help. Well below 100% while latency grows, the "
                "limit is elsewhere (the database pool, PostgreSQL).",
                "percentunit",
                [query(f"{WORKER_CPU} / on ({PER_WORKER}) {limit}", PER_WORKER_LEGEND)],
                width=16,
                threshold=0.9,
            ),
            lines(
                "Worker CPU per request",
                "Milliseconds of worker CPU (every worker, user + system) each answered "
                "request costs: 1000 * CPU rate / request rate. Capacity plan: this * the "
                "target requests/s ÷ 1000 = cores of workers needed (make sweep writes the "
                "same figure per worker count). Read it under steady load: when idle, "
                "Prometheus's scrapes and the workers' own sampling dominate.",
                "ms",
                [query(f"1000 * {ALL_WORKERS_CPU} / {ALL_REQUESTS}", "CPU per request")],
            ),
            lines(
                "Requests per core of workers",
                "Requests per second that one fully busy core of workers answers: request "
                "rate / workers' CPU rate (the inverse of CPU per request). Target requests/s "
                "÷ this = cores of workers needed; a drop as workers are added means they "
                "contend (for CPUs, the pool or the database) rather than scale.",
                "reqps",
                [query(f"{ALL_REQUESTS} / {ALL_WORKERS_CPU}", "requests/s per core")],
            ),
        ],
    )


def variables() -> list[Builder[VariableModel]]:
    route_query = "label_values(http_requests_total, route)"
    return [
        dashboard.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(VariableOption(text="Prometheus", value="prometheus"))
        .multi(False)
        .include_all(False)
        .regex(""),
        dashboard.QueryVariable("route")
        .label("Route")
        .datasource(DATASOURCE)
        .query(route_query)
        # `.*` rather than Grafana's default (every current value, OR-ed): shorter
        # queries, and routes that appear after the page loaded are included.
        .include_all(True)
        .all_value(".*")
        .multi(True)
        .current(VariableOption(text=["All"], value=["$__all"]))
        # New routes show up on a time range change, without a reload.
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .regex(""),
    ]


def dashboard_model(name: str = NAME) -> dashboard.Dashboard:
    """The dashboard of the deployment called `name` (STACK_NAME): its title and uid."""
    board = (
        dashboard.Dashboard(TITLE if name == NAME else f"{name.capitalize()} stack")
        .uid(f"{name}-stack")
        .description(
            "nginx -> gunicorn (uvicorn workers) -> PostgreSQL: traffic, latency, workers, "
            "database pools, nginx and the scaling lab's capacity figures, from Prometheus. "
            "Generated by deploy/grafana/dashboard.py; edit that, not this JSON."
        )
        .tags([name, "nginx", "gunicorn", "postgresql"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-15m", "now")
        .refresh("5s")
        .timepicker(
            dashboard.TimePicker().refresh_intervals(["5s", "10s", "30s", "1m", "5m", "15m"])
        )
        .timezone("browser")
        .week_start("")
        .version(1)
        .annotation(
            dashboard.AnnotationQuery()
            .name("Annotations & Alerts")
            .built_in(1)
            .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
        )
        .variables(variables())
    )
    return assemble(
        board, [traffic(), latency(), workers(), database_pool(), nginx(), scaling_lab()]
    )


def render(name: str = NAME) -> str:
    """The dashboard as the committed file holds it (for another STACK_NAME: its own)."""
    model = dashboard_model(name).build()
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Write the {TITLE!r} Grafana dashboard.")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if {OUTPUT.name} is not what this writes"
    )
    parser.add_argument("--output", type=Path, default=None, help="where to write (- for stdout)")
    parser.add_argument(
        "--name", default=NAME, help="the deployment's STACK_NAME: title, uid, file name"
    )
    args = parser.parse_args(argv)
    text = render(args.name)
    output: Path = args.output or OUTPUT.with_name(f"{args.name}.json")
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
