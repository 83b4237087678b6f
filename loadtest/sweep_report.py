"""The worker sweep's report, written: sweep.csv (and rounds.csv), the charts, report.md,
report.html (one page with every chart inline, the dashboard's rows as well, drawn by
`deploy.grafana.render`) and summary.json."""

import base64
import csv
import html
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.plan import CapacityPlan, Step

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Where the CPU went, bottom to top of the stacked chart.
CPU_PARTS = ("workers", "Locust", "PostgreSQL", "nginx", "other", "idle")


@dataclass(frozen=True)
class Report:
    """Everything a sweep concluded, for report.md and report.html."""

    title: str
    steps: list[Step]
    chosen: Step
    reason: str
    budget: str
    plan: CapacityPlan | None
    plan_note: str
    knee: float | None = None
    knee_workers: int | None = None
    notes: list[str] = field(default_factory=list)
    rows: list[tuple[str, Path]] = field(default_factory=list)  # dashboard rows rendered
    window: str = ""
    rounds: list[Step] = field(default_factory=list)  # every step measured, when in rounds
    database: str = ""  # how big the database was (loadtest.database_size)


def write(report: Report, out_dir: Path) -> str:
    """Every file of the report into `out_dir` (the dashboard's rows are there already);
    report.md's text."""
    write_csv(out_dir / "sweep.csv", report.steps)
    if report.rounds:
        write_csv(out_dir / "rounds.csv", report.rounds)
    write_charts(report.steps, out_dir, report.knee)
    text = markdown(report)
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.html").write_text(html_page(report, out_dir))
    (out_dir / "summary.json").write_text(json.dumps(summary(report), indent=2) + "\n")
    return text


def summary(report: Report) -> dict[str, object]:
    """summary.json: what the sweep concluded, for scripts."""
    return {
        "recommended_workers": report.chosen.workers,
        "reason": report.reason,
        "predicted_knee": report.knee,
        "knee_workers": report.knee_workers,
        "plan": asdict(report.plan) if report.plan is not None else None,
        "database": report.database,
    }


def write_csv(path: Path, steps: list[Step]) -> None:
    """One row per step, a column per figure."""
    names = [field.name for field in fields(Step)]
    rows = [",".join(names)] + [",".join(str(v) for v in asdict(s).values()) for s in steps]
    path.write_text("\n".join(rows) + "\n")


def read_csv(path: Path) -> list[Step]:
    """The steps of a sweep.csv (or rounds.csv) as `write_csv` wrote them."""
    whole = {field.name for field in fields(Step) if field.type in (int, "int")}
    steps = []
    with path.open() as file:
        for row in csv.DictReader(file):
            figures: dict[str, Any] = {
                name: int(value) if name in whole else float(value) for name, value in row.items()
            }
            steps.append(Step(**figures))
    return steps


def cpu_parts(step: Step) -> dict[str, float]:
    """The cores each part of the machine used during the step."""
    return {
        "workers": step.total_worker_cpu,
        "Locust": step.locust_cpu,
        "PostgreSQL": step.postgres_cpu,
        "nginx": step.nginx_cpu,
        "other": step.other_cpu,
        "idle": step.idle_cpu,
    }


def write_charts(steps: list[Step], out_dir: Path, knee: float | None = None) -> list[Path]:
    """throughput.png (with the ideal line, and the knee the caps predict), p99.png and
    cpu.png, against the worker count."""
    import matplotlib  # noqa: PLC0415 (only the sweep needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    workers = [s.workers for s in steps]
    cpus = steps[0].cpus
    cap = steps[0].cpu_cap
    setup = f"{cpus} CPUs" + (f", workers capped at {cap:g} CPU" if cap else "")
    paths = []

    figure, axes = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    measured = [s.requests_per_second for s in steps]
    one = steps[0].requests_per_second / steps[0].workers
    axes.plot(workers, [one * n for n in workers], linestyle="--", color="grey",
              label=f"ideal: {one:.0f} req/s per worker x workers")  # fmt: skip
    axes.plot(workers, measured, marker="o", label="measured")
    if knee is not None:
        axes.axvline(
            knee, color="tab:red", linestyle=":", label=f"knee the caps predict: {knee:.1f}"
        )
    axes.set_ylim(0, max(measured) * 1.3)
    axes.legend(loc="upper left", fontsize="small")
    _finish(axes, "requests/s", f"throughput against workers ({setup})", workers)
    paths.append(_save(figure, out_dir / "throughput.png"))

    figure, axes = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    axes.plot(workers, [s.p99_ms for s in steps], marker="o", color="tab:red")
    axes.set_ylim(bottom=0)
    _finish(axes, "p99 latency (ms)", f"p99 against workers ({setup})", workers)
    paths.append(_save(figure, out_dir / "p99.png"))

    figure, axes = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    bottom = [0.0] * len(steps)
    positions = list(range(len(steps)))
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "whitesmoke"]
    for part, colour in zip(CPU_PARTS, colours, strict=True):
        values = [cpu_parts(s)[part] for s in steps]
        axes.bar(positions, values, bottom=bottom, color=colour, edgecolor="grey",
                 linewidth=0.5, label=part)  # fmt: skip
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_xticks(positions, [str(n) for n in workers])
    axes.set_ylim(0, cpus * 1.05)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    _finish(axes, "cores", f"where the CPU went ({setup})")
    paths.append(_save(figure, out_dir / "cpu.png"))
    return paths


def _finish(axes: "Axes", label: str, title: str, workers: list[int] | None = None) -> None:
    axes.set_xlabel("gunicorn workers")
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
    axes.set_title(title, fontsize="medium")
    if workers is not None:
        axes.set_xticks(workers)


def _save(figure: "Figure", path: Path) -> Path:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def table(steps: list[Step]) -> list[str]:
    """The sweep's table, in Markdown."""
    lines = [
        "| workers | req/s | x one worker | p50 ms | p95 ms | p99 ms | failed | CPU/worker | "
        "workers | Locust | PostgreSQL | nginx | machine | pool in use | pool wait p99 ms | "
        "worker ms/req | limited by |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: | ---: | ---: | --- |",
    ]
    one = steps[0].requests_per_second / steps[0].workers if steps[0].workers else 0
    for s in steps:
        lines.append(
            f"| {s.workers} | {s.requests_per_second:.0f} | "
            f"{s.requests_per_second / one if one else 0:.2f} | {s.p50_ms:g} | {s.p95_ms:g} | "
            f"{s.p99_ms:g} | {s.failure_ratio:.2%} | {s.worker_cpu:.0%} | "
            f"{s.total_worker_cpu:.2f} | {s.locust_cpu:.2f} | {s.postgres_cpu:.2f} | "
            f"{s.nginx_cpu:.2f} | {s.machine_cpu:.0%} | {s.pool_in_use:.0%} | "
            f"{s.pool_wait_p99_ms:.1f} | {s.worker_ms_per_request:.2f} | {s.limit()[0]} |"
        )
    return lines


def markdown(report: Report) -> str:
    """report.md."""
    first = report.steps[0]
    setup = (
        f"{first.cpus} CPUs; every worker capped at **{first.cpu_cap:g} CPU** (the scaling lab: "
        f"a cgroup per worker)"
        if first.cpu_cap
        else f"{first.cpus} CPUs; workers uncapped"
    )
    lines = [
        f"# {report.title}",
        "",
        f"{setup}; Locust in {first.locust_processes} process"
        f"{'es' if first.locust_processes > 1 else ''}. {report.window}",
        "",
        *table(report.steps),
        "",
        "CPU columns are cores (1.00 = one CPU busy); CPU/worker is the share of what one "
        "worker may use (its cap, or one core).",
        "",
        f"**Recommendation: {report.chosen.workers} worker"
        f"{'s' if report.chosen.workers > 1 else ''}** "
        f"({report.chosen.requests_per_second:.0f} req/s, p99 {report.chosen.p99_ms:g} ms) — "
        f"{report.reason}.",
    ]
    if report.knee is not None:
        lines += [
            "",
            f"The caps predict the knee at **{report.knee:.1f} workers**: where {first.cpus} "
            f"CPUs, less what runs whatever the load, are used up by workers at their "
            f"{first.cpu_cap:g}-CPU caps and the rest of the machine serving them (a straight "
            f"line through the steps run at the caps). Past it, throughput should stay flat: "
            f"from {report.knee_workers} workers of those measured.",
        ]
    lines += ["", report.budget[:1].upper() + report.budget[1:], "", "## Capacity plan", ""]
    if report.plan is not None:
        lines += [f"- {line}" for line in report.plan.describe()]
    lines += ["", report.plan_note]
    if report.database:
        lines += ["", report.database]
    lines += ["", "## Charts", ""]
    lines += ["![throughput](throughput.png) ![p99](p99.png)", "", "![CPU](cpu.png)"]
    if report.rows:
        lines += ["", "## The dashboard over the sweep", ""]
        lines += [f"![{title}]({path.name})" for title, path in report.rows]
    if report.notes:
        lines += ["", "Caveats:", *(f"- {note}" for note in report.notes)]
    return "\n".join(lines) + "\n"


def html_page(report: Report, out_dir: Path) -> str:
    """report.html: report.md as one page, every image inline."""
    lines = markdown(report).splitlines()
    body: list[str] = []
    rows: list[list[str]] = []

    def flush_table() -> None:
        if not rows:
            return
        head, *rest = rows
        body.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead>")
        body.append(
            "<tbody>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rest)
            + "</tbody></table>"
        )
        rows.clear()

    items: list[str] = []

    def flush_list() -> None:
        if items:
            body.append("<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>")
            items.clear()

    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append([_inline(c, out_dir) for c in cells])
            continue
        flush_table()
        if line.startswith("- "):
            items.append(_inline(line[2:], out_dir))
            continue
        flush_list()
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line == "Caveats:":
            body.append("<h3>Caveats</h3>")
        elif line:
            body.append(f"<p>{_inline(line, out_dir)}</p>")
    flush_table()
    flush_list()
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}th{background:#f4f4f4}img{max-width:100%;margin:4px}"
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(report.title)}</title><style>{style}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _inline(text: str, out_dir: Path) -> str:
    """Markdown's bold and images, in HTML; images become data URIs."""

    def image(match: re.Match[str]) -> str:
        data = base64.b64encode((out_dir / match.group(2)).read_bytes()).decode()
        return f'<img alt="{html.escape(match.group(1))}" src="data:image/png;base64,{data}">'

    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", image, escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
