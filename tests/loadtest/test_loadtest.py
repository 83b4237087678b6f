"""Locust, the load-test report and the worker sweep, on short runs against the real stack."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.run import RunResult
from loadtest.sweep import Step, recommend
from loadtest.thresholds import Thresholds, loopback_only, violations
from tests.postgres import ROOT
from tests.stack import Stack


def loadtest(stack: Stack, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest.run", "--host", stack.url, "--users", "10",
         "--spawn-rate", "10", "--run-time", "6", "--out", str(out), *extra],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_loadtest_writes_the_reports_and_passes(stack: Stack, tmp_path: Path) -> None:
    result = loadtest(stack, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All thresholds held." in result.stdout
    # Locust's own progress line while it ran, and its own verdict.
    assert re.search(r"^loadtest: 5s: \d+ requests, \d+ req/s", result.stdout, re.MULTILINE)
    assert "loadtest: all thresholds held" in result.stdout
    for name in ("locust_stats.csv", "locust.html", "summary.md", "result.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    stats = (tmp_path / "locust_stats.csv").read_text()
    # Every kind of request of the mix ran, and none failed.
    for name in ("/api/v1/notes/{note_id}", "/api/v1/notes?page", "/api/v1/notes/stats",
                 "/api/v1/notes/{note_id} PATCH", "POST"):  # fmt: skip
        assert name in stats, name
    header, values = (tmp_path / "result.csv").read_text().splitlines()
    row = dict(zip(header.split(","), values.split(","), strict=True))
    assert int(row["requests"]) > 100
    assert int(row["failures"]) == 0


def test_loadtest_fails_when_a_threshold_breaks(stack: Stack, tmp_path: Path) -> None:
    result = loadtest(stack, tmp_path, "--max-p99-ms", "0.01")
    assert result.returncode == 1
    assert "p99" in result.stdout
    assert "Broken" in (tmp_path / "summary.md").read_text()


def bare_locust(host: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`locust` as a person would run it: the locustfile and pyproject.toml's defaults."""
    return subprocess.run(
        [sys.executable, "-m", "locust", "--host", host, "--users", "5", "--run-time", "3s",
         *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_bare_locust_run_keeps_the_thresholds(stack: Stack) -> None:
    held = bare_locust(stack.url)
    broken = bare_locust(stack.url, "--max-p99-ms", "0.01")
    assert held.returncode == 0, held.stdout + held.stderr
    assert "loadtest: all thresholds held" in held.stdout
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert re.search(r"loadtest: broken: p99 [\d.]+ ms > 0.01 ms", broken.stdout)


def test_a_bare_locust_run_refuses_other_hosts() -> None:
    result = bare_locust("http://192.168.1.10:8080")
    assert result.returncode != 0
    assert "loopback" in result.stdout + result.stderr


def test_loadtest_refuses_other_hosts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.run", "--host", "http://192.168.1.10:8080"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "loopback" in result.stderr


def test_sweep_measures_each_worker_count_and_recommends(stack: Stack, tmp_path: Path) -> None:
    before = stack.worker_pids()
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.sweep", "--workers", "1 2", "--host", stack.url,
         "--prometheus", stack.prometheus_url, "--users", "10", "--run-time", "12",
         "--warmup", "1", "--out", str(tmp_path)],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sweep [1/2] 1 workers:" in result.stdout
    assert "sweep [2/2] 2 workers:" in result.stdout
    lines = (tmp_path / "sweep.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    assert [row["workers"] for row in rows] == ["1", "2"]
    for row in rows:
        assert float(row["requests_per_second"]) > 0
        assert float(row["failure_ratio"]) == 0
        assert float(row["worker_cpu"]) > 0, "no CPU figure from Prometheus"
    report = (tmp_path / "report.md").read_text()
    assert "**Recommendation:" in report
    assert "connection budget ok" in report
    for chart in ("throughput.png", "p99.png"):
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(stack.worker_pids()) == len(before)


def step(workers: int, rps: float, p99: float, **overrides: float) -> Step:
    figures = {
        "p50_ms": 5.0, "p95_ms": 20.0, "failure_ratio": 0.0, "worker_cpu": 0.5,
        "total_worker_cpu": 0.5 * workers, "machine_cpu": 0.5, "pool_in_use": 0.2,
        "pool_wait_p99_ms": 0.1, "locust_cpu": 0.3,
    }  # fmt: skip
    figures.update(overrides)
    return Step(workers=workers, requests_per_second=rps, p99_ms=p99, **figures)


def test_recommendation_is_the_smallest_count_near_the_best() -> None:
    steps = [
        step(1, 900, 40, worker_cpu=0.98),
        step(2, 1500, 30, worker_cpu=0.9),
        step(3, 1540, 35),
        step(4, 1560, 700),  # fastest, but its p99 is unacceptable
    ]
    chosen, reason = recommend(steps, max_p99_ms=500, max_failure_ratio=0.01)
    assert chosen.workers == 2
    assert reason.startswith("CPU-bound: workers at 90% CPU")


def test_recommendation_names_the_database_when_the_pool_waits() -> None:
    steps = [step(1, 1000, 40), step(2, 1010, 60, pool_wait_p99_ms=25.0)]
    chosen, reason = recommend(steps, max_p99_ms=500, max_failure_ratio=0.01)
    assert chosen.workers == 1
    steps = [step(1, 500, 40), step(2, 1000, 60, pool_wait_p99_ms=25.0)]
    chosen, reason = recommend(steps, max_p99_ms=500, max_failure_ratio=0.01)
    assert chosen.workers == 2
    assert reason.startswith("DB-bound")


def test_thresholds() -> None:
    good = RunResult(1000, 0, 500.0, 5.0, 20.0, 40.0, 0.3, 10.0)
    assert good.violations(Thresholds()) == []
    bad = RunResult(1000, 50, 500.0, 5.0, 300.0, 900.0, 0.3, 10.0)
    assert bad.violations(Thresholds()) == [
        "failure ratio 5.00% > 1.00%",
        "p95 300 ms > 250 ms",
        "p99 900 ms > 500 ms",
    ]
    assert violations(Thresholds(), requests=0, failures=0, p95_ms=0, p99_ms=0) == [
        "no request completed",
        "failure ratio 100.00% > 1.00%",
    ]


@pytest.mark.parametrize("host", ["http://127.0.0.1:8080", "http://localhost", "http://[::1]:80"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    assert loopback_only(host) == host


@pytest.mark.parametrize("host", ["http://192.168.1.10:8080", "http://example.com", "nonsense"])
def test_other_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        loopback_only(host)
