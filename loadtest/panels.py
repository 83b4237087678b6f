"""The Grafana dashboard's rows drawn as PNGs from Prometheus, where Grafana cannot run.

    python -m loadtest.panels [--prometheus http://127.0.0.1:9090] [--start UNIX] [--end UNIX]
        [--out DIR] [--dashboard deploy/grafana/dashboards/notes.json]

Reads the committed dashboard, runs each panel's queries against Prometheus over
[start, end] (default: the last 15 minutes) as Grafana would, and writes one
`row-<slug>.png` per dashboard row with its panels where the dashboard puts them: a line per
series named by the query's legend, units on the y axis, stat panels as their numbers,
tables as tables. A panel whose queries all return nothing to draw (no series, only NaN, or a
query Prometheus refuses) is drawn as "No data" and reported; the command then exits 1.
`make sweep` calls `render_rows` over its whole run.

Grafana's variables, as it fills them in: a variable with "All" takes its allValue (`$route`
is `.*`), else its current value; `$__interval` is the step (the window / 200, at least the
scrape interval), `$__rate_interval` is max(step + scrape interval, four scrape intervals),
`$__range` the window. The data source variable only picks the data source: ignored.
"""

import argparse
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import is_color_like
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from loadtest.thresholds import loopback_only

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "notes.json"
RESULTS = ROOT / "loadtest" / "results"

Json = dict[str, Any]

# deploy/prometheus/prometheus.yml's scrape_interval, and the data source's timeInterval.
SCRAPE_INTERVAL_SECONDS = 5
# Points per series, as a panel a few hundred pixels wide asks Grafana for.
POINTS = 200
DEFAULT_WINDOW_SECONDS = 15 * 60
# $name, ${name} and ${name:format}.
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
# A legend's {{label}}.
LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")

# The size of one cell of Grafana's grid (24 columns; a row unit is 30 px), in inches.
COLUMN_INCHES = 0.8
ROW_UNIT_INCHES = 0.42
DPI = 100
LEGEND_ENTRIES = 12
# Grafana's named colours that matplotlib does not know.
COLORS = {"dark-red": "#c4162a", "semi-dark-red": "#e02f44", "dark-green": "#37872d"}


@dataclass(frozen=True)
class RowImage:
    """One dashboard row drawn: its title, the PNG, and the titles of its panels with no data."""

    title: str
    path: Path
    empty_panels: list[str]


@dataclass(frozen=True)
class Window:
    """The time range the panels show, and the step Grafana would query it with."""

    start: float
    end: float

    @property
    def seconds(self) -> int:
        return max(1, round(self.end - self.start))

    @property
    def step(self) -> int:
        return max(SCRAPE_INTERVAL_SECONDS, math.ceil(self.seconds / POINTS))

    def builtins(self) -> dict[str, str]:
        """Grafana's global variables for this window."""
        rate = max(self.step + SCRAPE_INTERVAL_SECONDS, 4 * SCRAPE_INTERVAL_SECONDS)
        return {
            "__interval": duration(self.step),
            "__interval_ms": str(self.step * 1000),
            "__rate_interval": duration(rate),
            "__range": duration(self.seconds),
            "__range_s": str(self.seconds),
            "__range_ms": str(self.seconds * 1000),
        }


@dataclass
class Series:
    """One series of a query's result: its labels, its legend and its points (NaN where none)."""

    labels: dict[str, str]
    name: str
    times: list[float]
    values: list[float]


@dataclass
class PanelData:
    """A panel of the dashboard and what its queries returned."""

    panel: Json
    series: list[Series] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return str(self.panel.get("title", ""))

    @property
    def empty(self) -> bool:
        return not any(math.isfinite(v) for s in self.series for v in s.values)


@dataclass(frozen=True)
class Row:
    """A row of the dashboard and the panels under it (with queries), in layout order."""

    title: str
    panels: list[Json]


class QueryRefusedError(Exception):
    """Prometheus answered a query with an error (a bad expression, say)."""


# --- reading the dashboard ---------------------------------------------------------------------


def duration(seconds: int) -> str:
    """`seconds` as a PromQL duration in its largest whole unit: 20s, 1m, 15m, 1h."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def rows(board: Json) -> list[Row]:
    """The dashboard's rows with their panels; panels above the first row form a row named
    after the dashboard, and a collapsed row's panels (kept inside it) count too."""
    found: list[Row] = []
    current = Row(str(board.get("title", "")), [])
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            found.append(current)
            current = Row(str(panel.get("title", "")), list(panel.get("panels") or []))
        else:
            current.panels.append(panel)
    found.append(current)
    return [
        Row(row.title, [panel for panel in row.panels if panel.get("targets")])
        for row in found
        if row.panels
    ]


def variable_values(board: Json, window: Window) -> dict[str, str]:
    """What Grafana puts in place of each variable: "All" where a variable has it."""
    values = window.builtins()
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "datasource":
            continue
        name = str(variable["name"])
        current = variable.get("current", {}).get("value", "")
        if variable.get("includeAll"):
            values[name] = str(variable.get("allValue") or ".*")
        elif isinstance(current, list):
            values[name] = "|".join(str(value) for value in current)
        else:
            values[name] = str(current or variable.get("query", ""))
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """The expression as Grafana sends it to Prometheus; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            msg = f"unknown dashboard variable ${name} in {expr!r}"
            raise ValueError(msg)
        return values[name]

    return VARIABLE.sub(replace, expr)


def legend(template: str, labels: dict[str, str], expr: str) -> str:
    """A series' name as Grafana shows it: the legend with {{label}} filled in, or (auto)
    the metric and its labels, or the expression when the series has no labels."""
    if template and template != "__auto":
        return LABEL.sub(lambda match: labels.get(match.group(1), ""), template)
    shown = ", ".join(f'{key}="{value}"' for key, value in labels.items() if key != "__name__")
    if not labels:
        return expr
    return f"{labels.get('__name__', '')}{{{shown}}}"


# --- asking Prometheus -------------------------------------------------------------------------


def prometheus_get(prometheus: str, path: str, params: dict[str, str]) -> Json:
    """The `data` of a Prometheus API answer; QueryRefusedError when it refuses the query."""
    url = f"{prometheus}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (loopback http)
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code not in {400, 422}:
            raise
        error = json.load(exc)
        raise QueryRefusedError(str(error.get("error", exc))) from exc
    data: Json = body["data"]
    return data


def number(text: str) -> float:
    """A sample value; what cannot be drawn (NaN, ±Inf) is NaN."""
    value = float(text)
    return value if math.isfinite(value) else math.nan


def run_query(
    prometheus: str, target: Json, values: dict[str, str], window: Window
) -> list[Series]:
    """A panel target's series over the window: a range query, or an instant one at its end."""
    expr = substitute(str(target["expr"]), values)
    if target.get("instant") and not target.get("range"):
        params = {"query": expr, "time": f"{window.end:.3f}"}
        data = prometheus_get(prometheus, "/api/v1/query", params)
    else:
        params = {
            "query": expr,
            "start": f"{window.start:.3f}",
            "end": f"{window.end:.3f}",
            "step": str(window.step),
        }
        data = prometheus_get(prometheus, "/api/v1/query_range", params)
    template = str(target.get("legendFormat", ""))
    if data["resultType"] == "scalar":
        data["result"] = [{"metric": {}, "value": data["result"]}]
    found = []
    for result in data["result"]:
        points = result["values"] if "values" in result else [result["value"]]
        labels = {str(key): str(value) for key, value in result["metric"].items()}
        found.append(
            Series(
                labels,
                legend(template, labels, expr),
                [float(stamp) for stamp, _ in points],
                [number(value) for _, value in points],
            )
        )
    return found


def panel_data(prometheus: str, panel: Json, values: dict[str, str], window: Window) -> PanelData:
    """Every visible query of a panel, run."""
    data = PanelData(panel)
    for target in panel["targets"]:
        if target.get("hide"):
            continue
        try:
            data.series.extend(run_query(prometheus, target, values, window))
        except QueryRefusedError as exc:
            data.errors.append(f"{target.get('refId', '?')}: {exc}")
    return data


# --- drawing -----------------------------------------------------------------------------------


def plain(value: float) -> str:
    """Up to three significant digits, no exponent: 0.0123, 1.5, 250."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def scaled(value: float, scales: list[tuple[float, str]]) -> str:
    """`value` in the largest unit of `scales` (factor, suffix) it reaches."""
    for factor, suffix in scales:
        if abs(value) >= factor:
            return f"{plain(value / factor)}{suffix}"
    factor, suffix = scales[-1]
    return f"{plain(value / factor)}{suffix}"


SECONDS = [(1.0, " s"), (1e-3, " ms"), (1e-6, " µs")]
BYTES = [(2.0**30, " GiB"), (2.0**20, " MiB"), (2.0**10, " KiB"), (1.0, " B")]
SHORT = [(1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")]
# Grafana's unit ids: (multiplier, scales, suffix).
UNITS: dict[str, tuple[float, list[tuple[float, str]], str]] = {
    "percentunit": (100.0, [(1.0, "%")], ""),
    "percent": (1.0, [(1.0, "%")], ""),
    "s": (1.0, SECONDS, ""),
    "ms": (1e-3, SECONDS, ""),
    "bytes": (1.0, BYTES, ""),
    "reqps": (1.0, SHORT, " req/s"),
    "short": (1.0, SHORT, ""),
    "none": (1.0, SHORT, ""),
    "": (1.0, SHORT, ""),
}
# Spacings of the time axis's ticks, in seconds.
TICK_SPACINGS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400]


def format_value(value: float, unit: str, decimals: int | None = None) -> str:
    """A value as Grafana would show it in `unit` (a Grafana unit id)."""
    if decimals is not None:
        value = round(value, decimals)
    if value == 0:
        return "0"
    factor, scales, suffix = UNITS.get(unit, (1.0, SHORT, f" {unit}"))
    return scaled(value * factor, scales) + suffix


def color(name: str) -> str:
    """A Grafana colour name as matplotlib knows it."""
    name = COLORS.get(name, name)
    return name if is_color_like(name) else "black"


def threshold_color(value: float, defaults: Json) -> str:
    """The colour of the highest threshold step `value` reaches."""
    chosen = "black"
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step.get("value") is None or value >= step["value"]:
            chosen = color(str(step.get("color", "black")))
    return chosen


def draw_no_data(axes: Axes, data: PanelData) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    text = "No data" + "".join(f"\n{error[:90]}" for error in data.errors)
    axes.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        color="#b00020",
        fontsize=13,
        transform=axes.transAxes,
        wrap=True,
    )


def draw_lines(axes: Axes, data: PanelData, window: Window) -> None:
    """A time series panel: a line per series (stacked where the panel stacks them)."""
    defaults: Json = data.panel.get("fieldConfig", {}).get("defaults", {})
    custom: Json = defaults.get("custom", {})
    dashed = [
        re.compile(str(override["matcher"]["options"]))
        for override in data.panel.get("fieldConfig", {}).get("overrides", [])
        if override.get("matcher", {}).get("id") == "byRegexp"
        and any(p.get("id") == "custom.lineStyle" for p in override.get("properties", []))
    ]
    if custom.get("stacking", {}).get("mode") == "normal":
        stamps = sorted({stamp for series in data.series for stamp in series.times})
        grid = {stamp: index for index, stamp in enumerate(stamps)}
        layers = np.zeros((len(data.series), len(stamps)))
        for layer, series in zip(layers, data.series, strict=True):
            for stamp, value in zip(series.times, series.values, strict=True):
                layer[grid[stamp]] = 0.0 if math.isnan(value) else value
        axes.stackplot(
            stamps,
            layers,
            alpha=0.6,
            labels=[series.name for series in data.series],
        )
    else:
        for series in data.series:
            style = "--" if any(p.search(series.name) for p in dashed) else "-"
            [line] = axes.plot(
                series.times, series.values, linestyle=style, linewidth=1.2, label=series.name
            )
            # A point between two gaps makes no line: drawn as a dot, as Grafana does.
            alone = isolated(series.values)
            axes.plot(
                [series.times[i] for i in alone],
                [series.values[i] for i in alone],
                "o",
                markersize=3,
                color=line.get_color(),
            )
    if custom.get("thresholdsStyle", {}).get("mode", "off") != "off":
        for step in defaults.get("thresholds", {}).get("steps", []):
            if step.get("value") is not None:
                axes.axhline(step["value"], color=color(step["color"]), linestyle="--", linewidth=1)
    if defaults.get("min") is not None:
        axes.set_ylim(bottom=defaults["min"])
    unit = str(defaults.get("unit", ""))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: format_value(value, unit)))
    axes.yaxis.set_major_locator(MaxNLocator(nbins=5))
    if custom.get("axisLabel"):
        axes.set_ylabel(custom["axisLabel"], fontsize=8)
    time_axis(axes, window, most=max(3, data.panel["gridPos"]["w"] // 3))
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.25)
    # Below the plot, as Grafana's legend: the first LEGEND_ENTRIES series (a sweep's recycled
    # workers would otherwise squeeze the plot away).
    handles, names = axes.get_legend_handles_labels()
    axes.legend(
        handles[:LEGEND_ENTRIES],
        names[:LEGEND_ENTRIES],
        title=f"{LEGEND_ENTRIES} of {len(names)} series" if len(names) > LEGEND_ENTRIES else None,
        title_fontsize=7,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(0, -0.12),
        frameon=False,
        ncols=max(1, min(4, data.panel["gridPos"]["w"] // 4)),
    )


def isolated(values: list[float]) -> list[int]:
    """The indexes of the numbers whose neighbours are both missing (NaN or none)."""
    drawn = [math.isfinite(value) for value in values]
    return [
        index
        for index, here in enumerate(drawn)
        if here
        and not (index > 0 and drawn[index - 1])
        and not (index + 1 < len(drawn) and drawn[index + 1])
    ]


def draw_numbers(axes: Axes, data: PanelData) -> None:
    """A stat panel: each series' last value, coloured by the thresholds, mapped to words."""
    defaults: Json = data.panel.get("fieldConfig", {}).get("defaults", {})
    words: dict[str, str] = {}
    for mapping in defaults.get("mappings", []):
        if mapping.get("type") == "value":
            words.update({key: str(result["text"]) for key, result in mapping["options"].items()})
    axes.set_axis_off()
    shown = [series for series in data.series if any(math.isfinite(v) for v in series.values)]
    for index, series in enumerate(shown):
        last = [v for v in series.values if math.isfinite(v)][-1]
        key = str(int(last)) if last.is_integer() else str(last)
        text = words.get(key) or format_value(
            last, str(defaults.get("unit", "")), defaults.get("decimals")
        )
        x = (index + 0.5) / len(shown)
        axes.text(
            x, 0.75, series.name, ha="center", va="center", fontsize=9, transform=axes.transAxes
        )
        axes.text(
            x,
            0.4,
            text,
            ha="center",
            va="center",
            fontsize=26,
            fontweight="bold",
            color=threshold_color(last, defaults),
            transform=axes.transAxes,
        )


def draw_table(axes: Axes, data: PanelData) -> None:
    """A table panel: one row per series, its labels as columns (organized as the panel says)."""
    hidden: set[str] = set()
    renamed: dict[str, str] = {}
    for transformation in data.panel.get("transformations", []):
        if transformation.get("id") == "organize":
            options = transformation.get("options", {})
            hidden |= {key for key, hide in options.get("excludeByName", {}).items() if hide}
            renamed.update(options.get("renameByName", {}))
    columns = sorted({key for series in data.series for key in series.labels} - hidden)
    columns = [column for column in columns if column != "__name__"]
    axes.set_axis_off()
    table = axes.table(
        cellText=[[series.labels.get(column, "") for column in columns] for series in data.series],
        colLabels=[renamed.get(column, column) for column in columns],
        loc="upper center",
        cellLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.4)


def to_datetime(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, tz=UTC)


def time_axis(axes: Axes, window: Window, most: int) -> None:
    """The window on the x axis (unix seconds), ticked at round UTC times, at most `most`."""
    spacing = next((s for s in TICK_SPACINGS if window.seconds / s <= most), TICK_SPACINGS[-1])
    first = math.ceil(window.start / spacing) * spacing
    axes.set_xlim(window.start, window.end)
    axes.xaxis.set_major_locator(FixedLocator(range(first, math.floor(window.end) + 1, spacing)))
    shape = "%H:%M" if spacing % 60 == 0 else "%H:%M:%S"
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{to_datetime(x):{shape}}"))


def draw_row(row: Row, panels: list[PanelData], window: Window, path: Path) -> None:
    """The row's panels on the dashboard's grid, in one PNG."""
    top = min(panel.panel["gridPos"]["y"] for panel in panels)
    height = max(p.panel["gridPos"]["y"] + p.panel["gridPos"]["h"] for p in panels) - top
    figure = Figure(
        figsize=(24 * COLUMN_INCHES, height * ROW_UNIT_INCHES + 0.6), dpi=DPI, layout="constrained"
    )
    grid = figure.add_gridspec(height, 24)
    begin, end = to_datetime(window.start), to_datetime(window.end)
    figure.suptitle(
        f"{row.title}  ·  {begin:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S} UTC, step {window.step}s",
        fontsize=13,
        fontweight="bold",
    )
    for data in panels:
        place = data.panel["gridPos"]
        y = place["y"] - top
        axes = figure.add_subplot(grid[y : y + place["h"], place["x"] : place["x"] + place["w"]])
        axes.set_title(data.title, fontsize=10, loc="left")
        if data.empty:
            draw_no_data(axes, data)
        elif data.panel.get("type") == "stat":
            draw_numbers(axes, data)
        elif data.panel.get("type") == "table":
            draw_table(axes, data)
        else:
            draw_lines(axes, data, window)
    figure.savefig(path)


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "row"


def render_rows(
    prometheus: str, start: float, end: float, out_dir: Path, *, dashboard: Path = DASHBOARD
) -> list[RowImage]:
    """Draw every row of `dashboard` over [start, end] from `prometheus` (loopback only) into
    out_dir/row-<slug>.png; what each row image holds and which of its panels had no data."""
    loopback_only(prometheus)
    if end <= start:
        msg = f"the window ends ({end}) before it starts ({start})"
        raise ValueError(msg)
    board = json.loads(dashboard.read_text(encoding="utf-8"))
    window = Window(start, end)
    values = variable_values(board, window)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for row in rows(board):
        panels = [panel_data(prometheus, panel, values, window) for panel in row.panels]
        path = out_dir / f"row-{slug(row.title)}.png"
        draw_row(row, panels, window, path)
        images.append(RowImage(row.title, path, [data.title for data in panels if data.empty]))
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prometheus", default=f"http://127.0.0.1:{os.environ.get('PROMETHEUS_PORT', '9090')}"
    )
    parser.add_argument("--start", type=float, default=None, help="unix time (default: end - 15m)")
    parser.add_argument("--end", type=float, default=None, help="unix time (default: now)")
    parser.add_argument("--out", type=Path, default=RESULTS / "panels", help="folder for the PNGs")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    args = parser.parse_args(argv)
    try:
        loopback_only(args.prometheus)
    except ValueError as exc:
        parser.error(str(exc))
    end = args.end if args.end is not None else time.time()
    start = args.start if args.start is not None else end - DEFAULT_WINDOW_SECONDS
    if end <= start:
        parser.error("--end must be after --start")
    images = render_rows(args.prometheus, start, end, args.out, dashboard=args.dashboard)
    for image in images:
        print(image.path)
        for title in image.empty_panels:
            print(f"  no data: {title}")
    return 1 if any(image.empty_panels for image in images) else 0


if __name__ == "__main__":
    sys.exit(main())
