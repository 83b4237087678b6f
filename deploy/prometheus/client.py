"""The one client of Prometheus's HTTP query API: the sweep's pool figures, the dashboard's
rows drawn as PNGs (`deploy.grafana.render`) and the tests all ask Prometheus through it.

It lives beside the configuration of the Prometheus it asks (deploy/prometheus/), under
`deploy/` rather than `loadtest/`, because the dashboard's renderer in `deploy/grafana/` uses
it and `deploy/` does not depend on the load tests. Plain HTTP with no credentials: it asks a
Prometheus on this machine only. Synchronous (urllib): an async caller runs it in a thread.
"""

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import yaml  # type: ignore[import-untyped]

from deploy.loopback import loopback_only

Json = dict[str, Any]

# deploy/prometheus/prometheus.yml's scrape_interval (and the Grafana data source's
# timeInterval), which Compose's Prometheus runs with; the native runner's is
# PROMETHEUS_SCRAPE_INTERVAL. Ask a running Prometheus (`Prometheus.scrape_interval`) for its own.
SCRAPE_INTERVAL_SECONDS = 5
# A Prometheus duration: 1h30m, 5s, 500ms.
DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class QueryRefusedError(Exception):
    """Prometheus answered a query with an error (a bad expression, say)."""


@dataclass(frozen=True)
class Series:
    """One series of an answer: its labels and its points (time, value), an instant query's
    one point; values as Prometheus wrote them, NaN and ±Inf included."""

    labels: dict[str, str]
    points: list[tuple[float, float]]

    @property
    def value(self) -> float:
        """The last value (an instant query's only one)."""
        return self.points[-1][1]


def duration_seconds(text: str) -> float:
    """A Prometheus duration (`5s`, `1m30s`, `500ms`) in seconds; ValueError for anything else."""
    parts = DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        msg = f"not a Prometheus duration: {text!r}"
        raise ValueError(msg)
    return sum(int(number) * DURATION_SECONDS[unit] for number, unit in parts)


def instant_path(expr: str, at: float | None = None) -> str:
    """The API path of an instant query at Unix time `at` (default: Prometheus's now)."""
    params = {"query": expr} | ({} if at is None else {"time": f"{at:.3f}"})
    return f"/api/v1/query?{urllib.parse.urlencode(params)}"


def range_path(expr: str, start: float, end: float, step: int) -> str:
    """The API path of a range query over [start, end], a point every `step` seconds."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
    return f"/api/v1/query_range?{urllib.parse.urlencode(params)}"


def answer_data(body: Json) -> Json:
    """The `data` of an API answer; QueryRefusedError when Prometheus answered an error."""
    if body.get("status") != "success":
        raise QueryRefusedError(str(body.get("error", body)))
    data: Json = body["data"]
    return data


def series(data: Json) -> list[Series]:
    """The series of a query's `data`: a vector's or a matrix's, or a scalar as one series
    without labels."""
    if data["resultType"] == "scalar":
        return [Series({}, [_point(data["result"])])]
    return [
        Series(
            {str(key): str(value) for key, value in result["metric"].items()},
            [_point(point) for point in result.get("values") or [result["value"]]],
        )
        for result in data["result"]
    ]


def _point(point: list[Any]) -> tuple[float, float]:
    stamp, value = point
    return float(stamp), float(value)


@dataclass(frozen=True)
class Prometheus:
    """A Prometheus on this machine, at `url` (ValueError for any other address)."""

    url: str
    timeout: float = 30.0

    def __post_init__(self) -> None:
        loopback_only(self.url)

    def get(self, path: str) -> Json:
        """The `data` of an API path's answer; QueryRefusedError when Prometheus refuses it."""
        try:
            with urllib.request.urlopen(  # noqa: S310 (http to loopback, checked above)
                f"{self.url}{path}", timeout=self.timeout
            ) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code not in {400, 422}:  # a bad expression; anything else is not the query's
                raise
            body = json.load(exc)
        return answer_data(body)

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        """An instant query's series at Unix time `at` (default: now)."""
        return series(self.get(instant_path(expr, at)))

    def query_range(self, expr: str, start: float, end: float, step: int) -> list[Series]:
        """A range query's series over [start, end], a point every `step` seconds."""
        return series(self.get(range_path(expr, start, end, step)))

    def scrape_interval(self) -> int:
        """The seconds between two of its scrapes, rounded up to whole seconds: its
        configuration's global scrape_interval (Prometheus's default, 1m, where it sets none)."""
        config = yaml.safe_load(self.get("/api/v1/status/config")["yaml"]) or {}
        interval = str((config.get("global") or {}).get("scrape_interval", "1m"))
        return max(1, math.ceil(duration_seconds(interval)))

    def value(self, expr: str, at: float | None = None) -> float:
        """The value of an instant query with one series; 0 when it has none or NaN (a rate
        over no traffic)."""
        found = self.query(expr, at)
        value = found[0].value if found else 0.0
        return 0.0 if math.isnan(value) else value
