"""A panel's queries run against Prometheus as Grafana runs them: variables filled in, a
range query over the window (an instant one at its end where the target asks), each series
named by the target's legend."""

import math
import re
from dataclasses import dataclass, field
from typing import Any

from deploy.grafana.variables import Window, substitute
from deploy.prometheus.client import Prometheus, QueryRefusedError

Json = dict[str, Any]

# A legend's {{label}}.
LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass
class Series:
    """One series to draw: its labels, its legend and its points (NaN where none)."""

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
        """The panel's title."""
        return str(self.panel.get("title", ""))

    @property
    def empty(self) -> bool:
        """Whether nothing came back to draw: no series, or only NaN."""
        return not any(math.isfinite(v) for s in self.series for v in s.values)


def legend(template: str, labels: dict[str, str], expr: str) -> str:
    """A series' name as Grafana shows it: the legend with {{label}} filled in, or (auto)
    the metric and its labels, or the expression when the series has no labels."""
    if template and template != "__auto":
        return LABEL.sub(lambda match: labels.get(match.group(1), ""), template)
    shown = ", ".join(f'{key}="{value}"' for key, value in labels.items() if key != "__name__")
    if not labels:
        return expr
    return f"{labels.get('__name__', '')}{{{shown}}}"


def drawable(value: float) -> float:
    """A sample value; what cannot be drawn (NaN, ±Inf) is NaN."""
    return value if math.isfinite(value) else math.nan


def run_query(
    prometheus: Prometheus, target: Json, values: dict[str, str], window: Window
) -> list[Series]:
    """A panel target's series over the window: a range query, or an instant one at its end."""
    expr = substitute(str(target["expr"]), values)
    if target.get("instant") and not target.get("range"):
        found = prometheus.query(expr, window.end)
    else:
        found = prometheus.query_range(expr, window.start, window.end, window.step)
    template = str(target.get("legendFormat", ""))
    return [
        Series(
            each.labels,
            legend(template, each.labels, expr),
            [stamp for stamp, _ in each.points],
            [drawable(value) for _, value in each.points],
        )
        for each in found
    ]


def panel_data(
    prometheus: Prometheus, panel: Json, values: dict[str, str], window: Window
) -> PanelData:
    """Every visible query of a panel, run; a query Prometheus refuses is kept as an error."""
    data = PanelData(panel)
    for target in panel["targets"]:
        if target.get("hide"):
            continue
        try:
            data.series.extend(run_query(prometheus, target, values, window))
        except QueryRefusedError as exc:
            data.errors.append(f"{target.get('refId', '?')}: {exc}")
    return data
