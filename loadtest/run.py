"""`make loadtest`: Locust headless against the running stack, its reports, and a verdict.

    [LOCUSTFILE=path] uv run python -m loadtest.run [--users 50] [--spawn-rate 50] [--run-time 30]
        [--processes N] [--max-failure-ratio 0.01] [--max-p95-ms 250] [--max-p99-ms 500]

The users come from LOCUSTFILE (default the notes scenario, `loadtest/locustfile.py`); the
thresholds, progress lines and the loopback guard from `loadtest/harness.py`, loaded beside it,
so any locustfile is judged alike; Locust's exit code is the verdict. This adds what a person
wants around it: Locust's progress lines while it runs, its CSV and HTML
reports and a summary.md under loadtest/results/<timestamp>/, and Locust's own CPU.

One Locust process is one gevent loop on one core, good for about 5,000 requests a second: a
stack on a big host needs several. `--processes` (LOCUST_PROCESSES) runs Locust's own
`--processes N`: N worker processes generate the load and a master merges their statistics,
which is what the reports show.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from deploy.loopback import loopback_only
from deploy.native.processes import children_cpu_seconds, free_port
from loadtest.thresholds import Thresholds, violations
from service.runtime.capacity import usable_cpus

ROOT = Path(__file__).resolve().parent.parent
# The users: LOCUSTFILE, else the notes scenario. The harness (loopback guard, progress,
# thresholds) is loaded beside whichever it is.
DEFAULT_LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
HARNESS = ROOT / "loadtest" / "harness.py"
# The defaults of every Locust run, `make loadtest`'s and a bare `locust`'s alike.
LOCUST_DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["locust"]
DEFAULT_USERS = int(LOCUST_DEFAULTS["users"])
DEFAULT_SPAWN_RATE = float(LOCUST_DEFAULTS["spawn-rate"])
DEFAULT_RUN_TIME = int(str(LOCUST_DEFAULTS["run-time"]).removesuffix("s"))
DEFAULT_HOST = os.environ.get("LOADTEST_HOST", str(LOCUST_DEFAULTS["host"]))
RESULTS = ROOT / "loadtest" / "results"
# Each Locust process runs on one core (gevent): above this share of the cores its processes
# can use, Locust is the bottleneck.
LOCUST_CPU_LIMIT = 0.9
# A worker spends about four times Locust's CPU on a request of the mix: one Locust process
# drives about four cores of workers.
CPUS_PER_LOCUST_PROCESS = 4
PROGRESS_PREFIX = "loadtest:"


@dataclass(frozen=True)
class RunResult:
    """The aggregate figures of one Locust run."""

    requests: int
    failures: int
    requests_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    locust_cpu: float  # cores Locust used, all its processes together
    seconds: float
    locust_processes: int = 1  # processes generating the load

    @property
    def load_generator_saturated(self) -> bool:
        """Whether Locust, not the stack, limited this run."""
        return load_generator_saturated(self.locust_cpu, self.locust_processes)

    @property
    def failure_ratio(self) -> float:
        """Failed requests over all requests."""
        return self.failures / self.requests if self.requests else 1.0

    def violations(self, thresholds: Thresholds) -> list[str]:
        """Each threshold this run broke, in words."""
        return violations(
            thresholds,
            requests=self.requests,
            failures=self.failures,
            p95_ms=self.p95_ms,
            p99_ms=self.p99_ms,
        )


def default_processes() -> int:
    """LOCUST_PROCESSES, else one Locust process per four usable CPUs, and two at least
    wherever there are two CPUs: no single gevent loop then limits the load alone."""
    configured = os.environ.get("LOCUST_PROCESSES", "").strip()
    if configured:
        return int(configured)
    cpus = usable_cpus()
    return 1 if cpus == 1 else max(2, cpus // CPUS_PER_LOCUST_PROCESS)


def locustfile() -> Path:
    """The locustfile LOCUSTFILE names (relative to the current directory), else the notes
    scenario; a name that is no file stops the run with a message."""
    configured = os.environ.get("LOCUSTFILE", "").strip()
    if not configured:
        return DEFAULT_LOCUSTFILE
    path = Path(configured).resolve()
    if not path.is_file():
        msg = f"LOCUSTFILE={configured}: no such file"
        raise SystemExit(msg)
    return path


def load_generator_saturated(locust_cpu: float, processes: int) -> bool:
    """Whether Locust's processes together used nearly all the cores they could (one each)."""
    return locust_cpu >= LOCUST_CPU_LIMIT * processes


def run_locust(
    *,
    host: str,
    users: int,
    spawn_rate: float,
    seconds: int,
    out_dir: Path,
    tag: str,
    thresholds: Thresholds | None = None,
    reports: bool = True,
    processes: int = 1,
) -> RunResult | None:
    """Run Locust headless for `seconds` in `processes` load-generating processes, echoing its
    progress lines; with `reports`, its CSV and HTML go to `out_dir/<tag>*` and the figures
    are returned (a warm-up needs neither)."""
    loopback_only(host)
    thresholds = thresholds or Thresholds()
    argv = [
        sys.executable, "-m", "locust", "-f", f"{HARNESS},{locustfile()}", "--headless",
        "--host", host, "--users", str(users), "--spawn-rate", str(spawn_rate),
        "--run-time", f"{seconds}s", "--stop-timeout", "5", "--only-summary",
        "--max-failure-ratio", str(thresholds.max_failure_ratio),
        "--max-p95-ms", str(thresholds.max_p95_ms), "--max-p99-ms", str(thresholds.max_p99_ms),
    ]  # fmt: skip
    if processes > 1:
        # Locust's master merges what its worker processes measured; it waits for them at
        # exit, so their CPU is counted in ours below. It talks to them on a port of its own
        # on loopback: at Locust's default (5557, on every address) a second run on the same
        # machine fails to start.
        port = free_port()
        argv += ["--processes", str(processes), "--master-bind-host", "127.0.0.1",
                 "--master-bind-port", str(port), "--master-host", "127.0.0.1",
                 "--master-port", str(port)]  # fmt: skip
    if reports:
        out_dir.mkdir(parents=True, exist_ok=True)
        # The CSV and HTML are for people; the figures come from the JSON, which Locust writes
        # once every user has stopped. Its last CSV is written up to a second before that:
        # a 6 s run's CSV missed 15% of the requests the stack counted.
        argv += ["--csv", str(out_dir / tag), "--html", str(out_dir / f"{tag}.html"),
                 "--json-file", str(out_dir / tag)]  # fmt: skip
    started = time.monotonic()
    # Locust's CPU, all its processes included, once they have been waited for.
    cpu_before = children_cpu_seconds()
    log_path = out_dir / f"{tag}-locust.log" if reports else None
    output: list[str] = []
    with subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None  # noqa: S101 (stdout=PIPE above)
        for line in process.stdout:
            output.append(line)
            if line.startswith(PROGRESS_PREFIX):
                print(line, end="", flush=True)
    cpu = children_cpu_seconds() - cpu_before
    elapsed = time.monotonic() - started
    if log_path is not None:
        log_path.write_text("".join(output))
    # 0: every threshold held; 1: one broke (Locust printed which). Anything else: no run.
    if process.returncode not in (0, 1):
        tail = "".join(output[-20:])
        msg = f"locust exited with {process.returncode}:\n{tail}"
        raise SystemExit(msg)
    if not reports:
        return None
    return _aggregate(out_dir / f"{tag}.json", cpu / elapsed, elapsed, processes, seconds)


def _aggregate(
    stats_json: Path, locust_cpu: float, elapsed: float, processes: int, run_time: int
) -> RunResult:
    """The run's figures from Locust's final statistics: every request of every name."""
    entries = json.loads(stats_json.read_text())
    requests = sum(int(entry["num_requests"]) for entry in entries)
    failures = sum(int(entry["num_failures"]) for entry in entries)
    # Response times in Locust's own buckets (milliseconds, rounded), summed over the names.
    times: Counter[int] = Counter()
    for entry in entries:
        times.update({int(ms): count for ms, count in entry["response_times"].items()})

    def percentile(share: float) -> float:
        # Locust's own rule (locust.stats.calculate_response_time_percentile), without
        # importing Locust, which patches this process with gevent.
        within = int(requests * share)
        counted = 0
        for milliseconds in sorted(times, reverse=True):
            counted += times[milliseconds]
            if requests - counted <= within:
                return float(milliseconds)
        return 0.0

    return RunResult(
        requests=requests,
        failures=failures,
        # Requests over the run time. Locust's own Requests/s divides by the span its master
        # saw, which with worker processes starts late: 2,149 requests in a 10 s run read
        # as 267/s, not 215.
        requests_per_second=requests / run_time,
        p50_ms=percentile(0.5),
        p95_ms=percentile(0.95),
        p99_ms=percentile(0.99),
        locust_cpu=locust_cpu,
        seconds=elapsed,
        locust_processes=processes,
    )


def locust_warning(result: RunResult) -> str | None:
    """A warning when the load generator itself saturated its core."""
    if not result.load_generator_saturated:
        return None
    return (
        f"Locust used {result.locust_cpu:.2f} cores in {result.locust_processes} "
        f"process{'es' if result.locust_processes > 1 else ''}: the load generator is the "
        "bottleneck, so these figures understate what the stack can serve (raise "
        "LOCUST_PROCESSES, or run Locust on another machine)"
    )


def summary(result: RunResult, thresholds: Thresholds, broken: list[str]) -> str:
    """The Markdown summary of one run."""
    lines = [
        "| requests | failed | req/s | p50 ms | p95 ms | p99 ms | Locust processes | Locust CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {result.requests} | {result.failure_ratio:.2%} | {result.requests_per_second:.0f} | "
        f"{result.p50_ms:g} | {result.p95_ms:g} | {result.p99_ms:g} | "
        f"{result.locust_processes} | {result.locust_cpu:.2f} cores |",
        "",
        f"Thresholds: {thresholds.describe()}.",
    ]
    warning = locust_warning(result)
    if warning:
        lines += ["", f"**Warning:** {warning}."]
    lines += ["", "**Broken:** " + "; ".join(broken) + "." if broken else "All thresholds held."]
    return "\n".join(lines) + "\n"


def timestamp() -> str:
    """A sortable UTC timestamp for a results folder."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def main() -> None:
    """Command line: one run, its report, its verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--spawn-rate", type=float, default=DEFAULT_SPAWN_RATE)
    parser.add_argument("--run-time", type=int, default=DEFAULT_RUN_TIME, help="seconds")
    parser.add_argument(
        "--processes", type=int, default=None,
        help="Locust processes generating the load (default: LOCUST_PROCESSES, else one per "
        f"{CPUS_PER_LOCUST_PROCESS} usable CPUs, at least two on two CPUs or more)",
    )  # fmt: skip
    parser.add_argument("--max-failure-ratio", type=float, default=Thresholds.max_failure_ratio)
    parser.add_argument("--max-p95-ms", type=float, default=Thresholds.max_p95_ms)
    parser.add_argument("--max-p99-ms", type=float, default=Thresholds.max_p99_ms)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()

    try:
        loopback_only(args.host)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        processes = args.processes if args.processes is not None else default_processes()
    except ValueError:
        parser.error(
            f"LOCUST_PROCESSES must be a whole number, not {os.environ['LOCUST_PROCESSES']!r}"
        )
    if processes < 1:
        parser.error("--processes must be at least 1")
    if processes > args.users:
        parser.error(
            f"--processes {processes} would leave some without users (--users {args.users})"
        )
    thresholds = Thresholds(args.max_failure_ratio, args.max_p95_ms, args.max_p99_ms)
    out_dir = args.out or RESULTS / timestamp()
    print(
        f"loadtest: {locustfile()}: "
        f"{args.users} users for {args.run_time}s against {args.host}, "
        f"{processes} Locust process{'es' if processes > 1 else ''}",
        flush=True,
    )
    result = run_locust(
        host=args.host, users=args.users, spawn_rate=args.spawn_rate, seconds=args.run_time,
        out_dir=out_dir, tag="locust", thresholds=thresholds, processes=processes,
    )  # fmt: skip
    assert result is not None  # noqa: S101 (reports were asked for)
    broken = result.violations(thresholds)
    text = summary(result, thresholds, broken)
    (out_dir / "summary.md").write_text(f"# Load test {out_dir.name}\n\n{text}")
    (out_dir / "result.csv").write_text(
        ",".join(asdict(result)) + "\n" + ",".join(str(v) for v in asdict(result).values()) + "\n"
    )
    print(text)
    print(f"loadtest: reports in {out_dir}")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
