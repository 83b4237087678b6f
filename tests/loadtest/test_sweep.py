"""The worker sweep on the real stack: its outputs, and the scaling lab (workers capped in
cgroups) on a short run. How far the lab's workers scale is asserted by its gate
(`make bench-scaling`, tests/loadtest/test_sweep_gate.py), never here."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.native.cpu_caps import CpuCaps, CpuCapsUnavailableError
from deploy.native.processes import free_port
from loadtest.plan import knee_count, predicted_knee
from loadtest.sweep_report import read_csv
from service.runtime.cgroups import cpu_hierarchy, cpu_limit
from tests.postgres import ROOT
from tests.stack import Stack

PNG = b"\x89PNG\r\n\x1a\n"
CAP = 0.15
ROWS = ["traffic", "latency", "workers", "database-pool", "nginx", "scaling-lab-and-capacity"]


def sweep(stack: Stack, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest.sweep", "--host", stack.url,
         "--prometheus", stack.prometheus_url, "--out", str(out), *args],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def steps(out: Path) -> dict[int, dict[str, str]]:
    with (out / "sweep.csv").open() as file:
        return {int(row["workers"]): row for row in csv.DictReader(file)}


def test_sweep_measures_each_worker_count_and_recommends(stack: Stack, tmp_path: Path) -> None:
    before = stack.worker_pids()
    # Short steps: the tests' Prometheus scrapes every second (two scrapes a step at least),
    # and one Locust process starts in a second where two take five.
    result = sweep(stack, tmp_path, "--workers", "1 2", "--users", "10", "--run-time", "3",
                   "--warmup", "0", "--processes", "1")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sweep [1/2] 1 workers:" in result.stdout
    assert "sweep [2/2] 2 workers:" in result.stdout
    rows = steps(tmp_path)
    assert list(rows) == [1, 2]
    for row in rows.values():
        assert float(row["requests_per_second"]) > 0
        assert float(row["failure_ratio"]) == 0
        assert float(row["worker_cpu"]) > 0, "no CPU figure from Prometheus"
    report = (tmp_path / "report.md").read_text()
    assert "**Recommendation:" in report
    assert "Connection budget ok" in report
    assert "## Capacity plan" in report
    assert "ms of CPU per request" in report
    assert "no data" not in report, report  # every panel of every dashboard row drew
    assert "caps predict" not in report  # uncapped: no knee to predict
    # The size it was measured at, read from the workers' own database.
    size = re.search(r"Measured on a database of [\d.,]+ [kMG]?B \(.*notes ≈ [\d,]+ rows", report)
    assert size is not None, report
    assert json.loads((tmp_path / "summary.json").read_text())["database"].startswith("Measured")
    # The plan's PostgreSQL cost, against the rows and the buffer hits it was measured with.
    measured_on = (
        r"ms per request was measured on .*notes ≈ [\d,]+ rows.*: shared_buffers \(.*\) served"
    )
    assert re.search(measured_on + r" (only )?[\d.]+% of its block reads", report), report
    charts = ["throughput.png", "p99.png", "cpu.png", *(f"row-{row}.png" for row in ROWS)]
    for chart in charts:
        assert (tmp_path / chart).read_bytes()[:8] == PNG, chart
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(charts)
    assert len(stack.worker_pids()) == len(before)


def test_a_short_lab_sweep_caps_the_workers_computes_the_knee_and_gates(
    stack: Stack, tmp_path: Path
) -> None:
    """The lab works, on a short run: caps applied and released, workers at their caps, the
    knee computed, the report written, and the gate's verdict as the exit status. How well the
    workers scale is the gate's to judge (`make bench-scaling`), not this test's: on a busy
    shared machine no bound on speed holds every time."""
    try:
        CpuCaps.create("notes-test-probe", CAP).release()
    except CpuCapsUnavailableError as exc:
        pytest.skip(str(exc))
    before = stack.worker_pids()
    # Short steps, as above (20 users need no more than one Locust process). No two workers
    # serve 100 times one, on any machine: the gate must fail this sweep.
    result = sweep(stack, tmp_path, "--workers", "1 2", "--cpu-per-worker", str(CAP),
                   "--run-time", "3", "--warmup", "0", "--processes", "1",
                   "--min-scaling", "2:100")  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"workers capped at {CAP:g} CPU each" in result.stdout
    assert "sweep [2/2] 2 workers:" in result.stdout
    assert re.search(r"^gate: FAILED: 2 workers served [\d.]+x one \(bound 100\)$",
                     result.stdout, re.MULTILINE), result.stdout  # fmt: skip
    assert result.stdout.rstrip().splitlines()[-1].endswith("check(s) failed")
    rows = steps(tmp_path)
    assert list(rows) == [1, 2]
    for row in rows.values():
        assert float(row["failure_ratio"]) == 0
        assert float(row["cpu_cap"]) == CAP
        # Capped: uncapped, a worker under this load would use several times the cap.
        assert float(row["worker_cpu"]) <= 1.3, row
    # The workers ran at their caps: the workers' CPU was the limit, not the machine.
    assert float(rows[1]["worker_cpu"]) >= 0.85, rows[1]
    # The knee, computed from the steps the sweep wrote. Whether there is one depends on the
    # machine: with neighbours keeping every CPU busy at both steps, its busy CPU does not grow
    # with throughput and the caps predict none (tests/loadtest/test_plan.py has the rule on
    # figures written down, `make bench-scaling` asks for a knee).
    summary = json.loads((tmp_path / "summary.json").read_text())
    knee = predicted_knee(read_csv(tmp_path / "sweep.csv"))
    assert summary["predicted_knee"] == knee, summary
    assert summary["knee_workers"] == (knee_count(knee, [1, 2]) if knee else None), summary
    assert summary["recommended_workers"] in rows, summary
    report = (tmp_path / "report.md").read_text()
    assert f"capped at **{CAP:g} CPU**" in report
    assert ("The caps predict the knee at" in report) == (knee is not None), report
    assert "no data" not in report, report
    charts = ["throughput.png", "p99.png", "cpu.png", *(f"row-{row}.png" for row in ROWS)]
    for chart in charts:
        assert (tmp_path / chart).read_bytes()[:8] == PNG, chart
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(charts)
    # The caps are gone, every worker is limited as its master is again (by nothing, or by
    # the machine's own cgroup), and the worker count is back.
    hierarchy = cpu_hierarchy()
    assert hierarchy is not None
    assert not list(hierarchy.mount.glob("notes-lab-*"))
    after = stack.worker_pids()
    assert len(after) == len(before)
    assert [cpu_limit(pid) for pid in after] == [cpu_limit(stack.master_pid())] * len(after)


def test_a_step_shorter_than_two_scrapes_of_its_prometheus_is_refused_before_any_load(
    stack: Stack, tmp_path: Path
) -> None:
    """The sweep asks the Prometheus it is given how often it scrapes (the suite's: every
    second), before it scales anything."""
    before = stack.worker_pids()
    result = sweep(stack, tmp_path / "short", "--workers", "1", "--run-time", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"sweep: --run-time must be at least 2 s: the Prometheus at {stack.prometheus_url} "
        "scrapes every 1 s"
    )
    assert not (tmp_path / "short").exists()
    assert stack.worker_pids() == before


def test_a_prometheus_that_does_not_answer_is_refused_before_any_load(tmp_path: Path) -> None:
    silent = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.sweep", "--host", "http://127.0.0.1:1",
         "--prometheus", silent, "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"sweep: no answer from Prometheus at {silent}: "), (
        result.stderr
    )
    assert not (tmp_path / "out").exists()
