"""deploy/grafana/render.py and the modules it draws with: the dashboard's rows drawn as PNGs
from the real Prometheus of a loaded stack, with Grafana's variables filled in as Grafana would
and empty panels reported."""

import asyncio
import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from matplotlib import image

from deploy.grafana.draw import draw_row, isolated, legend_layout
from deploy.grafana.queries import PanelData, Series, legend
from deploy.grafana.render import DASHBOARD, render_rows
from deploy.grafana.rows import rows
from deploy.grafana.units import format_value
from deploy.grafana.variables import Window, substitute, variable_values
from deploy.prometheus.client import SCRAPE_INTERVAL_SECONDS, Prometheus
from tests.deploy.grafana.test_dashboard import (
    PROMETHEUS_CONFIG,
    ROWS,
    load_until_every_query_answers,
)
from tests.postgres import ROOT
from tests.stack import Stack

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def committed() -> dict[str, Any]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(board, dict)
    return board


def check_png(path: Path) -> None:
    """A PNG that decodes, the size of a dashboard row, with something drawn on it."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 1500, (path.name, width)
    assert 250 <= height <= 2500, (path.name, height)
    assert len(data) > 20_000, (path.name, len(data))
    pixels = image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.05, f"{path.name} is blank"


def panel(title: str, expr: str, *, x: int = 0, y: int = 1) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": "short"}, "overrides": []},
        "targets": [{"refId": "A", "expr": expr, "legendFormat": "{{job}}"}],
    }


def row(title: str, y: int, *, collapsed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "type": "row",
        "title": title,
        "collapsed": collapsed is not None,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
        "panels": collapsed or [],
    }


# --- no stack: reading the dashboard -----------------------------------------------------------


def test_panels_are_grouped_under_their_rows() -> None:
    board = {
        "title": "Tiny",
        "panels": [
            panel("above every row", "up", y=0),
            row("First", 8),
            panel("one", "up", y=9),
            panel("two", "up", x=8, y=9),
            {"type": "text", "title": "notes", "gridPos": {"h": 2, "w": 4, "x": 16, "y": 9}},
            row("Folded", 17, collapsed=[panel("inside", "up", y=18)]),
            row("Empty", 26),
            row("Last", 27),
            panel("three", "up", y=28),
        ],
    }
    found = [(each.title, [p["title"] for p in each.panels]) for each in rows(board)]
    # A panel with no queries (text) has nothing to draw; a row with no panels no image.
    assert found == [
        ("Tiny", ["above every row"]),
        ("First", ["one", "two"]),
        ("Folded", ["inside"]),
        ("Last", ["three"]),
    ]

    # The committed dashboard: every row, each with all the panels under it.
    grouped = rows(committed())
    assert [each.title for each in grouped] == ROWS
    drawn = [p["title"] for each in grouped for p in each.panels]
    assert drawn == [p["title"] for p in committed()["panels"] if p["type"] != "row"]


def test_variables_are_filled_in_as_grafana_would() -> None:
    # The scrape interval the variables are computed from is Prometheus's own.
    scraped = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
    assert f"scrape_interval: {SCRAPE_INTERVAL_SECONDS}s" in scraped
    board = committed()
    fifteen_minutes = variable_values(board, Window(1000, 1900))
    assert fifteen_minutes["route"] == ".*"  # "All"
    assert "datasource" not in fifteen_minutes  # it picks the data source, not a query value
    # The step is the window / 200, at least the scrape interval; $__rate_interval is
    # max(step + scrape interval, 4 scrape intervals).
    assert Window(1000, 1900).step == 5
    assert fifteen_minutes["__rate_interval"] == "20s"
    assert fifteen_minutes["__interval"] == "5s"
    assert fifteen_minutes["__range"] == "15m"
    assert fifteen_minutes["__range_s"] == "900"
    # A Prometheus scraping every second (the tests' stacks): shorter steps and rate windows.
    assert Window(1000, 1060, scrape_interval=1).step == 1
    assert Window(1000, 1060, scrape_interval=1).builtins()["__rate_interval"] == "4s"
    assert Window(1000, 1900, scrape_interval=1).builtins()["__rate_interval"] == "6s"
    hour = variable_values(board, Window(0, 3600))
    assert (hour["__interval"], hour["__rate_interval"], hour["__range"]) == ("18s", "23s", "1h")
    day = variable_values(board, Window(0, 86400))
    assert (day["__interval"], day["__interval_ms"], day["__rate_interval"]) == (
        "432s",
        "432000",
        "437s",
    )

    expr = 'sum(rate(http_requests_total{route=~"$route"}[$__rate_interval])) by (${route:regex})'
    assert substitute(expr, fifteen_minutes) == (
        'sum(rate(http_requests_total{route=~".*"}[20s])) by (.*)'
    )
    assert substitute("rate(x[${__rate_interval}])", hour) == "rate(x[23s])"
    with pytest.raises(ValueError, match=r"\$nope"):
        substitute("rate(x[$nope])", fifteen_minutes)
    # Every query of the dashboard, with nothing left for Prometheus to choke on.
    for each in rows(board):
        for p in each.panels:
            for target in p["targets"]:
                assert "$" not in substitute(target["expr"], fifteen_minutes), p["title"]


def test_legends_and_units() -> None:
    labels = {"__name__": "http_requests_total", "route": "/healthz", "status": "200"}
    assert legend("{{route}} {{ status }}", labels, "x") == "/healthz 200"
    assert legend("pid {{pid}}", labels, "x") == "pid "
    assert legend("__auto", labels, "x") == 'http_requests_total{route="/healthz", status="200"}'
    assert legend("", {}, "sum(up)") == "sum(up)"

    assert format_value(0.25, "percentunit") == "25%"
    assert format_value(0.0005, "s") == "500 µs"
    assert format_value(0.25, "s") == "250 ms"
    assert format_value(1.5, "ms") == "1.5 ms"
    assert format_value(3 * 2**20, "bytes") == "3 MiB"
    assert format_value(1500, "reqps") == "1.5k req/s"
    assert format_value(0.2, "short") == "0.2"
    assert format_value(2.0004, "short", decimals=0) == "2"
    assert format_value(0, "s") == "0"

    # Points with a gap on both sides are drawn as dots: a line needs two.
    nan = float("nan")
    assert isolated([nan, 1.0, nan, 2.0, 3.0, nan, 4.0]) == [1, 6]
    assert isolated([5.0]) == [0]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("count", [1, 12, 40])
def test_every_row_keeps_its_plots_whatever_the_legends_hold(count: int, tmp_path: Path) -> None:
    """Series with long names (a sweep's recycled workers, a route each): no legend is wider
    than its panel, so the layout never squeezes a plot away (matplotlib warns, then draws
    the row unlaid out)."""
    end = time.time()
    window = Window(end - 120, end)
    times = [window.start + 5 * step for step in range(25)]
    long = [f"pid {100_000 + n} GET /api/v1/notes/{{id}} 200 {'x' * 40}" for n in range(count)]
    for one in rows(committed()):
        drawn = [
            PanelData(shown, [Series({"route": "/x", "pid": "1"}, "x", times, [1.0] * 25)])
            if shown.get("type") in ("stat", "table")
            else PanelData(shown, [Series({}, name, times, [1.0] * 25) for name in long])
            for shown in one.panels
        ]
        draw_row(one, drawn, window, tmp_path / "row.png")
        check_png(tmp_path / "row.png")

    shown, columns = legend_layout(["short", "names"], 24)
    assert (shown, columns) == (["short", "names"], 4)
    shown, columns = legend_layout(long[:1], 6)
    assert columns == 1
    assert shown[0].endswith("…")
    assert len(shown[0]) < len(long[0])


def test_only_a_loopback_prometheus(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        render_rows(Prometheus("http://192.0.2.1:9090"), 0, 60, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "deploy.grafana.render", "--prometheus", "http://192.0.2.1:9090",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "loopback" in result.stderr
    assert not list(tmp_path.iterdir())


# --- against the stack's Prometheus ------------------------------------------------------------


async def test_every_row_renders_with_data_from_the_loaded_stack(
    stack: Stack, tmp_path: Path
) -> None:
    started = time.time()
    missing = await load_until_every_query_answers(stack)
    assert not missing, "queries with no data:\n" + "\n".join(missing)
    # The last minutes: the load, and a little before it.
    end = time.time()
    start = min(started - 30, end - 60)
    prometheus = Prometheus(stack.prometheus_url)
    images = await asyncio.to_thread(render_rows, prometheus, start, end, tmp_path)

    assert [each.title for each in images] == ROWS
    assert images[-1].path == tmp_path / "row-scaling-lab-and-capacity.png"
    written = await asyncio.to_thread(lambda: sorted(tmp_path.iterdir()))
    assert written == sorted(each.path for each in images)
    for each in images:
        await asyncio.to_thread(check_png, each.path)
    empty = {each.title: each.empty_panels for each in images if each.empty_panels}
    assert not empty, f"panels with no data: {empty}"


def test_a_panel_without_data_is_drawn_and_reported(stack: Stack, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.json"
    tiny.write_text(
        json.dumps(
            {
                "title": "Tiny",
                "panels": [
                    row("Checks", 0),
                    panel("Prometheus up", "up", x=0),
                    panel("Missing metric", "sum(rate(no_such_metric_total[$__rate_interval]))",
                          x=8),
                    panel("Refused query", "sum(rate(up[$__rate_interval])", x=16),
                ],
            }
        )
    )  # fmt: skip
    out = tmp_path / "out"
    end = time.time()
    [drawn] = render_rows(Prometheus(stack.prometheus_url), end - 120, end, out, dashboard=tiny)
    assert drawn.title == "Checks"
    assert drawn.path == out / "row-checks.png"
    assert drawn.empty_panels == ["Missing metric", "Refused query"]
    check_png(drawn.path)

    # The command prints each image and its empty panels, and fails on them.
    result = subprocess.run(
        [sys.executable, "-m", "deploy.grafana.render", "--prometheus", stack.prometheus_url,
         "--dashboard", str(tiny), "--out", str(out), "--start", str(end - 120),
         "--end", str(end)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        str(out / "row-checks.png"),
        "  no data: Missing metric",
        "  no data: Refused query",
    ]
