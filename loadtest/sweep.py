"""`make sweep`: the same Locust load at several worker counts, and which count to run.

    uv run python -m loadtest.sweep [--workers "1 2 4"] [--users 50] [--run-time 30]
        [--warmup 5] [--max-p99-ms 500]

For each worker count: scale the running stack live, warm up, run the load, and read from
Prometheus what the workers and the pool did meanwhile. Writes sweep.csv, report.md and two
PNG charts under loadtest/results/sweep-<timestamp>/, then puts the worker count back.
"""

import argparse
import json
import math
import os
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import psutil

from deploy.native import gunicorn
from deploy.native.processes import StackError, children
from deploy.native.state import Stack
from loadtest.run import (
    DEFAULT_HOST,
    DEFAULT_RUN_TIME,
    DEFAULT_SPAWN_RATE,
    DEFAULT_USERS,
    LOCUST_CPU_LIMIT,
    RESULTS,
    RunResult,
    run_locust,
)
from loadtest.run import timestamp as make_timestamp
from loadtest.thresholds import Thresholds, loopback_only
from service.runtime.capacity import usable_cpus

# "Within a few percent of the best" (run-to-run noise on a shared 2-core machine is ~3%).
NEAR_BEST = 0.95
CPU_BOUND = 0.85  # mean CPU share of a worker above which workers are the bottleneck
POOL_WAIT_BOUND_MS = 5.0  # pool wait p99 above which the database is the bottleneck
MACHINE_BOUND = 0.9  # share of all CPUs busy above which the machine is the bottleneck


@dataclass(frozen=True)
class Step:
    """One worker count's figures."""

    workers: int
    requests_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    failure_ratio: float
    worker_cpu: float  # mean share of one core per worker
    total_worker_cpu: float  # cores used by all workers together
    machine_cpu: float  # share of all this machine's CPUs busy (everything, not just workers)
    pool_in_use: float  # mean share of the pools' connections in use
    pool_wait_p99_ms: float
    locust_cpu: float


def default_worker_counts() -> list[int]:
    """1 up to twice the usable CPUs."""
    return list(range(1, 2 * usable_cpus() + 1))


def prometheus_query(url: str, query: str, at: float) -> list[tuple[dict[str, str], float]]:
    """The samples of an instant query at time `at`."""
    params = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as response:  # noqa: S310
        result = json.load(response)["data"]["result"]
    return [(sample["metric"], float(sample["value"][1])) for sample in result]


def prometheus_value(url: str, query: str, at: float) -> float:
    """The single value of an instant query (0 when it has none)."""
    samples = prometheus_query(url, query, at)
    value = samples[0][1] if samples else 0.0
    return 0.0 if math.isnan(value) else value  # NaN (no traffic) counts as 0


def worker_cores(prometheus: str, start: float, end: float) -> float:
    """Cores all workers used between `start` and `end`, from the raw samples.

    Each worker's CPU gauge only grows, so its growth between its first and last sample in
    the window is what it used; summing per process also counts workers recycled during the
    run (max_requests), and dividing by the span the samples cover avoids rate()'s
    extrapolation over a window of few samples.
    """
    window = f"{round(end - start)}s"
    params = urllib.parse.urlencode({"query": f"worker_cpu_seconds[{window}]", "time": end})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query?{params}", timeout=10) as response:  # noqa: S310
        series = [s["values"] for s in json.load(response)["data"]["result"]]
    series = [values for values in series if len(values) >= 2]
    if not series:
        return 0.0
    used = sum(float(values[-1][1]) - float(values[0][1]) for values in series)
    first = min(float(values[0][0]) for values in series)
    last = max(float(values[-1][0]) for values in series)
    return used / (last - first) if last > first else 0.0


def observe(prometheus: str, start: float, end: float, workers: int) -> dict[str, float]:
    """What the workers and the pool did between `start` and `end`."""
    window = f"{max(10, int(end - start))}s"
    cores = worker_cores(prometheus, start, end)
    seen = {"worker_cpu": cores / workers, "total_worker_cpu": cores}
    queries = {
        "pool_in_use": (
            "avg_over_time((sum(db_pool_connections_in_use) / sum(db_pool_connections_max))"
            f"[{window}:5s])"
        ),
        "pool_wait_p99_ms": (
            "1000 * histogram_quantile(0.99, sum by (le) "
            f"(increase(db_pool_wait_seconds_bucket[{window}])))"
        ),
    }
    seen.update((name, prometheus_value(prometheus, query, end)) for name, query in queries.items())
    return seen


def _busy_and_total_cpu_seconds() -> tuple[float, float]:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(times)
    return total - idle, total


def scale(workers: int) -> None:
    """Scale the running stack live (after its connection budget check)."""
    try:
        gunicorn.scale(Stack.from_environment(), workers)
    except StackError as exc:
        raise SystemExit(f"sweep: cannot scale to {workers}: {exc}") from None


def current_workers() -> int:
    """The worker count of the running stack."""
    master = gunicorn.master(Stack.from_environment())
    if master is None:
        raise SystemExit("sweep: the stack is not running: make up first")
    return len(children(master))


def recommend(steps: list[Step], max_p99_ms: float, max_failure_ratio: float) -> tuple[Step, str]:
    """The smallest worker count within a few percent of the best throughput at an
    acceptable p99, and the reason the curve flattens where it does."""
    healthy = [s for s in steps if s.p99_ms <= max_p99_ms and s.failure_ratio <= max_failure_ratio]
    if not healthy:
        best_p99 = min(steps, key=lambda s: s.p99_ms)
        return best_p99, (
            f"no worker count met p99 <= {max_p99_ms:g} ms with failures <= "
            f"{max_failure_ratio:.1%}; {best_p99.workers} had the lowest p99"
        )
    best = max(healthy, key=lambda s: s.requests_per_second)
    chosen = min(
        (s for s in healthy if s.requests_per_second >= NEAR_BEST * best.requests_per_second),
        key=lambda s: s.workers,
    )
    return chosen, _bottleneck(chosen, steps)


def _bottleneck(chosen: Step, steps: list[Step]) -> str:
    if chosen.locust_cpu >= LOCUST_CPU_LIMIT:
        return (
            f"load-generator-bound: Locust used {chosen.locust_cpu:.0%} of a core, so the "
            "stack was not pushed to its limit"
        )
    if chosen.worker_cpu >= CPU_BOUND:
        return f"CPU-bound: workers at {chosen.worker_cpu:.0%} CPU each"
    if chosen.machine_cpu >= MACHINE_BOUND:
        return (
            f"CPU-bound on the machine: {chosen.machine_cpu:.0%} of {usable_cpus()} CPUs busy "
            f"(workers {chosen.total_worker_cpu:.2f} cores, Locust {chosen.locust_cpu:.2f}, "
            "the rest PostgreSQL and nginx); more workers only share the same CPUs"
        )
    if chosen.pool_wait_p99_ms >= POOL_WAIT_BOUND_MS or chosen.pool_in_use >= 0.9:
        return (
            f"DB-bound: pool wait p99 {chosen.pool_wait_p99_ms:.1f} ms and pools "
            f"{chosen.pool_in_use:.0%} in use at {chosen.workers} workers, CPUs not saturated"
        )
    if any(s.workers > chosen.workers for s in steps):
        return "more workers added no throughput"
    return "throughput still rising at the largest count measured: sweep further"


def budget_line(workers: int) -> str:
    """The connection budget check for `workers`, in one line."""
    try:
        return (
            f"connection budget ok: {gunicorn.budget(Stack.from_environment(), workers).describe()}"
        )
    except StackError as exc:
        return str(exc)


def write_charts(steps: list[Step], out_dir: Path) -> None:
    """throughput.png and p99.png against the worker count."""
    import matplotlib  # noqa: PLC0415 (only the sweep needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    workers = [s.workers for s in steps]
    for name, values, label in (
        ("throughput", [s.requests_per_second for s in steps], "requests/s"),
        ("p99", [s.p99_ms for s in steps], "p99 latency (ms)"),
    ):
        figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
        axes.plot(workers, values, marker="o")
        axes.set_xlabel("gunicorn workers")
        axes.set_ylabel(label)
        axes.set_xticks(workers)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.set_title(f"{label} against workers ({usable_cpus()} CPUs)")
        figure.tight_layout()
        figure.savefig(out_dir / f"{name}.png")
        plt.close(figure)


def report(steps: list[Step], chosen: Step, reason: str, budget: str, notes: list[str]) -> str:
    """The Markdown report: the table, the recommendation, the caveats."""
    lines = [
        "| workers | req/s | p50 ms | p95 ms | p99 ms | failed | CPU/worker | "
        "CPU all workers | machine CPU | pool in use | pool wait p99 ms | Locust CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in steps:
        lines.append(
            f"| {s.workers} | {s.requests_per_second:.0f} | {s.p50_ms:g} | {s.p95_ms:g} | "
            f"{s.p99_ms:g} | {s.failure_ratio:.2%} | {s.worker_cpu:.0%} | "
            f"{s.total_worker_cpu:.2f} | {s.machine_cpu:.0%} | {s.pool_in_use:.0%} | "
            f"{s.pool_wait_p99_ms:.1f} | "
            f"{s.locust_cpu:.0%} |"
        )
    lines += [
        "",
        f"**Recommendation: {chosen.workers} worker{'s' if chosen.workers > 1 else ''}** "
        f"({chosen.requests_per_second:.0f} req/s, p99 {chosen.p99_ms:g} ms) — {reason}.",
        "",
        f"Connection budget: {budget}",
        "",
        "![throughput](throughput.png) ![p99](p99.png)",
    ]
    if notes:
        lines += ["", "Caveats:", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, workers: int, out_dir: Path, prefix: str) -> Step:
    """Scale to `workers`, warm up, run the load, and read what Prometheus saw."""
    print(f"{prefix} scaling, warming up {args.warmup}s", flush=True)
    scale(workers)
    # Judged by the sweep's own figures, not Locust's gates: a step may break them.
    lenient = Thresholds(max_failure_ratio=1.0, max_p95_ms=1e9, max_p99_ms=1e9)
    if args.warmup:
        run_locust(
            host=args.host, users=args.users, spawn_rate=args.spawn_rate, seconds=args.warmup,
            out_dir=out_dir, tag=f"warmup-{workers}", thresholds=lenient, reports=False,
        )  # fmt: skip
    print(f"{prefix} measuring for {args.run_time}s", flush=True)
    start = time.time()
    busy_before, total_before = _busy_and_total_cpu_seconds()
    result: RunResult | None = run_locust(
        host=args.host, users=args.users, spawn_rate=args.spawn_rate, seconds=args.run_time,
        out_dir=out_dir, tag=f"workers-{workers}", thresholds=lenient,
    )  # fmt: skip
    assert result is not None  # noqa: S101 (reports were asked for)
    busy_after, total_after = _busy_and_total_cpu_seconds()
    end = time.time()
    time.sleep(6)  # let Prometheus take the scrape that closes the window
    seen = observe(args.prometheus, start, end, workers)
    return Step(
        workers=workers,
        requests_per_second=result.requests_per_second,
        p50_ms=result.p50_ms,
        p95_ms=result.p95_ms,
        p99_ms=result.p99_ms,
        failure_ratio=result.failure_ratio,
        locust_cpu=result.locust_cpu,
        machine_cpu=(busy_after - busy_before) / max(1, total_after - total_before),
        **seen,
    )


def main() -> None:
    """Command line: sweep, report, restore."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="", help='e.g. "1 2 4" (default 1..2x CPUs)')
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument(
        "--prometheus",
        default=f"http://127.0.0.1:{os.environ.get('PROMETHEUS_PORT', '9090')}",
    )
    parser.add_argument("--users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--spawn-rate", type=float, default=DEFAULT_SPAWN_RATE)
    parser.add_argument(
        "--run-time", type=int, default=DEFAULT_RUN_TIME, help="seconds per worker count"
    )
    parser.add_argument("--warmup", type=int, default=5, help="seconds before each run")
    parser.add_argument("--max-p99-ms", type=float, default=Thresholds.max_p99_ms)
    parser.add_argument("--max-failure-ratio", type=float, default=Thresholds.max_failure_ratio)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    try:
        loopback_only(args.host)
        loopback_only(args.prometheus)
    except ValueError as exc:
        parser.error(str(exc))
    if args.run_time < 10:
        parser.error("--run-time must be at least 10 s: Prometheus scrapes every 5 s")
    counts = [int(n) for n in args.workers.split()] or default_worker_counts()
    if any(n < 1 for n in counts):
        parser.error("worker counts must be at least 1")

    out_dir = args.out or RESULTS / f"sweep-{make_timestamp()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    original = current_workers()
    steps: list[Step] = []
    notes: list[str] = []
    total = len(counts)
    try:
        for index, workers in enumerate(counts, start=1):
            prefix = f"sweep [{index}/{total}] {workers} workers:"
            step = measure(args, workers, out_dir, prefix)
            steps.append(step)
            if step.locust_cpu >= LOCUST_CPU_LIMIT:
                notes.append(
                    f"{workers} workers: Locust used {step.locust_cpu:.0%} of a core; the "
                    "load generator limited this step"
                )
            print(
                f"{prefix} {step.requests_per_second:.0f} req/s, p99 {step.p99_ms:g} ms, "
                f"{step.failure_ratio:.2%} failed, workers at {step.worker_cpu:.0%} CPU each",
                flush=True,
            )
    finally:
        scale(original)

    chosen, reason = recommend(steps, args.max_p99_ms, args.max_failure_ratio)
    names = [field.name for field in fields(Step)]
    rows = [",".join(names)] + [",".join(str(v) for v in asdict(s).values()) for s in steps]
    (out_dir / "sweep.csv").write_text("\n".join(rows) + "\n")
    notes.append(
        f"Locust, PostgreSQL and nginx share this machine's {usable_cpus()} CPUs with the "
        "workers: the curve shows this machine, not the workers alone."
    )
    write_charts(steps, out_dir)
    text = report(steps, chosen, reason, budget_line(chosen.workers), notes)
    (out_dir / "report.md").write_text(f"# Worker sweep {out_dir.name}\n\n{text}")
    print(text)
    print(f"sweep: report in {out_dir / 'report.md'}; workers back to {original}")


if __name__ == "__main__":
    main()
