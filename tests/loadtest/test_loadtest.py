"""Locust, the load-test report and the worker sweep, on short runs against the real stack."""

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deploy.loopback import loopback_only
from loadtest.run import RunResult, default_processes, locust_warning
from loadtest.thresholds import Thresholds, violations
from service.runtime.capacity import usable_cpus
from tests.metrics import parse
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


def api_requests_served(stack: Stack) -> float:
    """Every API request the workers answered so far, from the stack's own counter."""
    samples = parse(httpx.get(f"{stack.ops_url}/metrics", timeout=10).text)
    return sum(
        count
        for (name, labels), count in samples.items()
        if name == "http_requests_total" and dict(labels)["route"].startswith("/api/v1/notes")
    )


def test_locust_in_two_processes_counts_every_request_once(stack: Stack, tmp_path: Path) -> None:
    served_before = api_requests_served(stack)
    result = loadtest(stack, tmp_path, "--processes", "2")
    served = api_requests_served(stack) - served_before
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 Locust processes" in result.stdout
    # Locust's own master spread the users over two worker processes and merged their stats.
    log = (tmp_path / "locust-locust.log").read_text()
    assert "Sending spawn jobs of 10 users at 10.00 spawn rate to 2 ready workers" in log
    header, values = (tmp_path / "result.csv").read_text().splitlines()
    row = dict(zip(header.split(","), values.split(","), strict=True))
    assert row["locust_processes"] == "2"
    assert int(row["failures"]) == 0
    # What the merged report counts is exactly what the workers answered.
    assert int(row["requests"]) == served
    assert float(row["locust_cpu"]) > 0


def test_locust_processes_default_from_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCUST_PROCESSES", raising=False)
    cpus = usable_cpus()
    assert default_processes() == (1 if cpus == 1 else max(2, cpus // 4))
    monkeypatch.setenv("LOCUST_PROCESSES", "3")
    assert default_processes() == 3


def test_a_saturated_load_generator_is_judged_over_all_its_processes() -> None:
    one = RunResult(1000, 0, 500.0, 5.0, 20.0, 40.0, locust_cpu=0.95, seconds=10.0)
    two = RunResult(1000, 0, 500.0, 5.0, 20.0, 40.0, 0.95, 10.0, locust_processes=2)
    assert one.load_generator_saturated
    assert locust_warning(one) is not None
    assert not two.load_generator_saturated
    assert locust_warning(two) is None
    assert RunResult(1000, 0, 500.0, 5.0, 20.0, 40.0, 1.9, 10.0, 2).load_generator_saturated
