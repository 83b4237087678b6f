"""Grafana's template variables filled in as Grafana fills them in, for a time window.

A variable with "All" takes its allValue (`$route` is `.*`), else its current value;
`$__interval` is the step (the window / 200, at least the scrape interval),
`$__rate_interval` is max(step + scrape interval, four scrape intervals), `$__range` the
window. The data source variable only picks the data source: ignored.
"""

import math
import re
from dataclasses import dataclass
from typing import Any

from deploy.prometheus.client import SCRAPE_INTERVAL_SECONDS

Json = dict[str, Any]

# Points per series, as a panel a few hundred pixels wide asks Grafana for.
POINTS = 200
# $name, ${name} and ${name:format}.
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


@dataclass(frozen=True)
class Window:
    """The time range the panels show, and the step Grafana would query it with."""

    start: float
    end: float
    scrape_interval: int = SCRAPE_INTERVAL_SECONDS  # the data source's (timeInterval)

    @property
    def seconds(self) -> int:
        """The window's length in whole seconds (one at least)."""
        return max(1, round(self.end - self.start))

    @property
    def step(self) -> int:
        """Seconds between two points of a series."""
        return max(self.scrape_interval, math.ceil(self.seconds / POINTS))

    def builtins(self) -> dict[str, str]:
        """Grafana's global variables for this window."""
        rate = max(self.step + self.scrape_interval, 4 * self.scrape_interval)
        return {
            "__interval": duration(self.step),
            "__interval_ms": str(self.step * 1000),
            "__rate_interval": duration(rate),
            "__range": duration(self.seconds),
            "__range_s": str(self.seconds),
            "__range_ms": str(self.seconds * 1000),
        }


def duration(seconds: int) -> str:
    """`seconds` as a PromQL duration in its largest whole unit: 20s, 1m, 15m, 1h."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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
