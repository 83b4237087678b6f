"""The Grafana dashboard's rows drawn as PNGs from Prometheus, where Grafana cannot run.

    python -m deploy.grafana.render [--prometheus http://127.0.0.1:9090] [--start UNIX]
        [--end UNIX] [--out DIR] [--dashboard deploy/grafana/dashboards/notes.json]

Reads the committed dashboard, runs each panel's queries against Prometheus over
[start, end] (default: the last 15 minutes) as Grafana would (`deploy.grafana.variables`,
`deploy.grafana.queries`), and writes one `row-<slug>.png` per dashboard row
(`deploy.grafana.draw`). A panel whose queries all return nothing to draw (no series, only
NaN, or a query Prometheus refuses) is drawn as "No data" and reported; the command then
exits 1. `make sweep` calls `render_rows` over its whole run.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.grafana.draw import draw_row
from deploy.grafana.queries import panel_data
from deploy.grafana.rows import rows
from deploy.grafana.variables import Window, variable_values
from deploy.prometheus.client import Prometheus

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "notes.json"
# Where the command writes when not told: beside the load tests' other results.
RESULTS = ROOT / "loadtest" / "results" / "panels"
DEFAULT_WINDOW_SECONDS = 15 * 60


@dataclass(frozen=True)
class RowImage:
    """One dashboard row drawn: its title, the PNG, and the titles of its panels with no data."""

    title: str
    path: Path
    empty_panels: list[str]


def render_rows(
    prometheus: Prometheus, start: float, end: float, out_dir: Path, *, dashboard: Path = DASHBOARD
) -> list[RowImage]:
    """Draw every row of `dashboard` over [start, end] from `prometheus` into
    out_dir/row-<slug>.png; what each row image holds and which of its panels had no data."""
    if end <= start:
        msg = f"the window ends ({end}) before it starts ({start})"
        raise ValueError(msg)
    board = json.loads(dashboard.read_text(encoding="utf-8"))
    window = Window(start, end, prometheus.scrape_interval())
    values = variable_values(board, window)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for row in rows(board):
        panels = [panel_data(prometheus, panel, values, window) for panel in row.panels]
        path = out_dir / f"row-{row.slug}.png"
        draw_row(row, panels, window, path)
        images.append(RowImage(row.title, path, [data.title for data in panels if data.empty]))
    return images


def main(argv: list[str] | None = None) -> int:
    """Command line: draw the rows, print each image and its empty panels; 1 if any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prometheus", default=f"http://127.0.0.1:{os.environ.get('PROMETHEUS_PORT', '9090')}"
    )
    parser.add_argument("--start", type=float, default=None, help="unix time (default: end - 15m)")
    parser.add_argument("--end", type=float, default=None, help="unix time (default: now)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the PNGs")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    args = parser.parse_args(argv)
    try:
        prometheus = Prometheus(args.prometheus)
    except ValueError as exc:
        parser.error(str(exc))
    end = args.end if args.end is not None else time.time()
    start = args.start if args.start is not None else end - DEFAULT_WINDOW_SECONDS
    if end <= start:
        parser.error("--end must be after --start")
    images = render_rows(prometheus, start, end, args.out, dashboard=args.dashboard)
    for image in images:
        print(image.path)
        for title in image.empty_panels:
            print(f"  no data: {title}")
    return 1 if any(image.empty_panels for image in images) else 0


if __name__ == "__main__":
    sys.exit(main())
