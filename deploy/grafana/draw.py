"""A dashboard row drawn with matplotlib as Grafana shows it: its panels where the dashboard
puts them on its 24-column grid, a line per series named by its legend with units on the y
axis, stat panels as their numbers, tables as tables, a panel with no data as "No data"."""

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import is_color_like
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from deploy.grafana.queries import PanelData
from deploy.grafana.rows import Row
from deploy.grafana.units import format_value
from deploy.grafana.variables import Window

Json = dict[str, Any]

# The size of one cell of Grafana's grid (24 columns; a row unit is 30 px), in inches.
COLUMN_INCHES = 0.8
ROW_UNIT_INCHES = 0.42
DPI = 100
LEGEND_ENTRIES = 12
# About the width of one character of the legend's 7-point font, and of an entry's line and
# spacing, in inches: enough to keep the legend within its panel's width.
LEGEND_CHAR_INCHES = 0.06
LEGEND_HANDLE_INCHES = 0.45
# Grafana's named colours that matplotlib does not know.
COLORS = {"dark-red": "#c4162a", "semi-dark-red": "#e02f44", "dark-green": "#37872d"}
# Spacings of the time axis's ticks, in seconds.
TICK_SPACINGS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400]


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
    """A panel with nothing to draw: "No data", and the errors of its refused queries."""
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
    shown, columns = legend_layout(names[:LEGEND_ENTRIES], data.panel["gridPos"]["w"])
    axes.legend(
        handles[:LEGEND_ENTRIES],
        shown,
        title=f"{LEGEND_ENTRIES} of {len(names)} series" if len(names) > LEGEND_ENTRIES else None,
        title_fontsize=7,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(0, -0.12),
        frameon=False,
        ncols=columns,
    )


def legend_layout(names: list[str], width: int) -> tuple[list[str], int]:
    """The legend's names and columns for a panel `width` grid columns wide: names cut (…) to
    what one column holds, and as many columns (four at most) as the widest fits. A legend
    wider than its panel leaves the layout no room for the plot."""
    inches = width * COLUMN_INCHES
    room = max(8, int((inches - LEGEND_HANDLE_INCHES) / LEGEND_CHAR_INCHES))
    shown = [name if len(name) <= room else name[: room - 1] + "…" for name in names]
    widest = max((len(name) for name in shown), default=0) * LEGEND_CHAR_INCHES
    return shown, max(1, min(4, int(inches / (widest + LEGEND_HANDLE_INCHES))))


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
    """A Unix time as a UTC datetime."""
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
