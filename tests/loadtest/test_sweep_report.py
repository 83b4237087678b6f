"""The sweep's report written (loadtest/sweep_report.py), on figures written down: every file
`make sweep` leaves, and what each says of a lab sweep's knee; no stack."""

import json
from pathlib import Path
from typing import Any

from loadtest.plan import Step, capacity_plan
from loadtest.sweep_report import Report, read_csv, write, write_csv
from service.runtime.capacity import ConnectionBudget

PNG = b"\x89PNG\r\n\x1a\n"
CAP = 0.15
# docs/sweep/lab-0.15: 1, 2, 4 and 8 workers at 0.15 CPU; the caps put the knee at 5.8.
RATES = {1: 114.0, 2: 220.0, 4: 444.0, 8: 635.0}


def lab_step(workers: int, rps: float, **overrides: float) -> Step:
    figures: dict[str, Any] = {
        "p50_ms": 75.0, "p95_ms": 170.0, "p99_ms": 220.0, "failure_ratio": 0.0,
        "worker_cpu": 1.0, "total_worker_cpu": CAP * workers, "machine_cpu": 0.3,
        "pool_in_use": 0.4, "pool_wait_p99_ms": 90.0, "locust_cpu": 0.3, "locust_processes": 2,
        "cpu_cap": CAP, "cpus": 2,
    }  # fmt: skip
    figures.update(overrides)
    return Step(workers=workers, requests_per_second=rps, **figures)


def lab(rates: dict[int, float] = RATES, **overrides: dict[str, float]) -> list[Step]:
    """A lab sweep's medians; `overrides` by worker count, e.g. `w1={"worker_cpu": 0.8}`."""
    return [lab_step(n, rps, **overrides.get(f"w{n}", {})) for n, rps in rates.items()]


def lab_report(knee: float | None, *, rounds: bool) -> Report:
    steps = lab()
    budget = ConnectionBudget(workers=8, per_worker=5, max_connections=100, reserved=3)
    return Report(
        title="Worker sweep test",
        steps=steps,
        chosen=steps[-1],
        reason="limited by the workers' CPU",
        budget=f"connection budget ok: {budget.describe()}",
        plan=capacity_plan(steps, 2, budget),
        plan_note="Projected onto 2 cores (this machine's).",
        knee=knee,
        knee_workers=8 if knee else None,
        window="10 users per worker, 10 s per step after 2 s of warm-up.",
        rounds=[lab_step(n, rps * 0.98) for n, rps in RATES.items()] + steps if rounds else [],
    )


def test_every_file_of_a_lab_sweeps_report(tmp_path: Path) -> None:
    report = lab_report(5.8, rounds=True)
    text = write(report, tmp_path)
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(
        ["sweep.csv", "rounds.csv", "throughput.png", "p99.png", "cpu.png", "report.md",
         "report.html", "summary.json"]
    )  # fmt: skip
    assert read_csv(tmp_path / "sweep.csv") == report.steps
    assert read_csv(tmp_path / "rounds.csv") == report.rounds
    for chart in ("throughput.png", "p99.png", "cpu.png"):
        assert (tmp_path / chart).read_bytes()[:8] == PNG, chart
    assert (tmp_path / "report.md").read_text() == text
    assert "every worker capped at **0.15 CPU**" in text
    assert "The caps predict the knee at **5.8 workers**" in text
    assert "from 8 workers of those measured" in text
    assert "| 2 | 220 | 1.93 |" in text  # the multiple the gate judges
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["recommended_workers"] == 8
    assert (summary["predicted_knee"], summary["knee_workers"]) == (5.8, 8)
    assert summary["plan"]["cores"] == 2


def test_a_sweep_without_a_knee_or_rounds(tmp_path: Path) -> None:
    text = write(lab_report(None, rounds=False), tmp_path)
    assert "caps predict" not in text
    assert not (tmp_path / "rounds.csv").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["predicted_knee"], summary["knee_workers"]) == (None, None)


def test_a_sweep_csv_reads_back_as_written(tmp_path: Path) -> None:
    steps = lab()
    write_csv(tmp_path / "sweep.csv", steps)
    assert read_csv(tmp_path / "sweep.csv") == steps
