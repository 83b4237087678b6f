"""`make sweep`: the same Locust load at several worker counts, what limited each, which
count to run, and a capacity plan.

    uv run python -m loadtest.sweep [--workers "1 2 4"] [--users 50] [--run-time 30]
        [--warmup 5] [--rounds 1] [--max-p99-ms 500] [--processes N] [--cpu-per-worker 0.2]
        [--plan-cores N]

For each worker count: scale the running stack live, warm up, run the load, and read from
Prometheus and from the processes what the workers, the pool, Locust, PostgreSQL and nginx did
meanwhile. Writes sweep.csv, report.md, report.html (one page, charts inline), the charts and
the dashboard's rows rendered over the sweep under loadtest/results/sweep-<timestamp>/, then
puts the worker count back.

`--cpu-per-worker` is the scaling lab: every worker runs in a cgroup of its own capped at that
fraction of a CPU, so that a small machine has CPU to spare beside the workers and shows the
shape a big host has: throughput rising with workers until the caps add up to what the rest of
the machine leaves them, flat after.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import psutil

from deploy.grafana.render import render_rows
from deploy.loopback import loopback_only
from deploy.native import gunicorn
from deploy.native.cpu_caps import (
    CapKeeper,
    CpuCaps,
    CpuCapsLeftBehindError,
    CpuCapsUnavailableError,
)
from deploy.native.processes import StackError, children
from deploy.native.state import Stack
from deploy.prometheus.client import Prometheus
from loadtest import sweep_report
from loadtest.plan import Step, capacity_plan, knee_count, predicted_knee, recommend
from loadtest.run import (
    DEFAULT_HOST,
    DEFAULT_RUN_TIME,
    DEFAULT_SPAWN_RATE,
    DEFAULT_USERS,
    RESULTS,
    RunResult,
    default_processes,
    load_generator_saturated,
    run_locust,
)
from loadtest.run import timestamp as make_timestamp
from loadtest.thresholds import Thresholds
from service.runtime.capacity import Budget, connection_budget, usable_cpus

# Users per worker in a lab sweep. A capped worker is measured at its capacity, so each step
# offers every worker the same load: enough users to keep it at its cap, and few enough that
# requests do not queue deep behind its pool, which costs it CPU per request. With 25 users per
# worker (20 waiting on a pool of 5), two workers capped at 0.2 spent 10 to 15% more CPU per
# request than one, and served 1.56 to 1.90 times one; with 10, 1.86 to 2.6 (median 1.96), each
# worker still at its cap (docs/performance.md, "Scaling lab").
LAB_USERS_PER_WORKER = 10


def default_worker_counts(cpu_per_worker: float) -> list[int]:
    """1 up to twice the usable CPUs; with caps, 1, 2, 4 and on by twos until the caps add
    up to every CPU (the knee lies before that)."""
    cpus = usable_cpus()
    if not cpu_per_worker:
        return list(range(1, 2 * cpus + 1))
    top = max(4, math.ceil(cpus / cpu_per_worker))
    return [1, 2, *range(4, top + 1, 2)]


def observe(prometheus: Prometheus, start: float, end: float) -> dict[str, float]:
    """What the pools did between `start` and `end`, from the workers' metrics."""
    window = f"{max(10, int(end - start))}s"
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
    return {name: prometheus.value(query, end) for name, query in queries.items()}


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far: the machine's, and those of the workers, PostgreSQL and nginx.

    Read from the kernel's per-process counters at both ends of a step: exact, where the
    workers' own CPU gauge is sampled every 2 s and scraped every 5 s. A worker recycled
    during a step takes its CPU with it (max_requests is 200,000: rare within a step).
    """

    busy: float
    total: float
    processes: dict[int, tuple[str, float]]  # pid -> (part, CPU seconds)

    @classmethod
    def take(cls, workers: list[int]) -> "CpuSnapshot":
        """Now; `workers` are the gunicorn workers' pids."""
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        processes = {}
        for process in psutil.process_iter(["name", "cpu_times"]):
            name = "workers" if process.pid in workers else process.info["name"] or ""
            part = {"workers": "workers", "postgres": "postgres", "nginx": "nginx"}.get(name)
            if part and process.info["cpu_times"] is not None:
                used = process.info["cpu_times"]
                processes[process.pid] = (part, used.user + used.system)
        return cls(busy=sum(times) - idle, total=sum(times), processes=processes)

    def since(self, before: "CpuSnapshot", part: str) -> float:
        """CPU seconds `part`'s processes used since `before` (a new process from zero)."""
        return sum(
            seconds - before.processes.get(pid, (part, 0.0))[1]
            for pid, (kind, seconds) in self.processes.items()
            if kind == part
        )


def scale(workers: int) -> None:
    """Scale the running stack live (after its connection budget check)."""
    try:
        gunicorn.scale(Stack.from_environment(), workers)
    except StackError as exc:
        raise SystemExit(f"sweep: cannot scale to {workers}: {exc}") from None


def master_pid() -> int:
    """The running stack's gunicorn master."""
    master = gunicorn.master(Stack.from_environment())
    if master is None:
        raise SystemExit("sweep: the stack is not running: make up first")
    return master


def database_budget(workers: int) -> Budget:
    """The connection budget of `workers` against the stack's database (and pooler)."""
    return connection_budget(Stack.from_environment().app_settings(), workers)


def users(args: argparse.Namespace, workers: int) -> int:
    """The users of a step: --users, or in the lab the same load per worker."""
    return int(args.users or LAB_USERS_PER_WORKER * workers)


def measure(
    args: argparse.Namespace, workers: int, out_dir: Path, prefix: str
) -> tuple[Step, tuple[float, float]]:
    """Scale to `workers`, warm up, run the load, and read what the processes did; the
    figures, and the window over which to ask Prometheus what the pools did."""
    print(f"{prefix} scaling, warming up {args.warmup}s", flush=True)
    scale(workers)
    # Judged by the sweep's own figures, not Locust's gates: a step may break them.
    lenient = Thresholds(max_failure_ratio=1.0, max_p95_ms=1e9, max_p99_ms=1e9)
    # Every step's run counts from the first user: a slow ramp would eat into it.
    spawn_rate = args.spawn_rate or max(DEFAULT_SPAWN_RATE, users(args, workers))
    load = {
        "host": args.host, "users": users(args, workers), "spawn_rate": spawn_rate,
        "out_dir": out_dir, "thresholds": lenient, "processes": args.processes,
    }  # fmt: skip
    if args.warmup:
        run_locust(seconds=args.warmup, tag=f"warmup-{workers}", reports=False, **load)
    print(f"{prefix} measuring for {args.run_time}s", flush=True)
    start = time.time()
    master = master_pid()
    before = CpuSnapshot.take(children(master))
    result: RunResult | None = run_locust(seconds=args.run_time, tag=f"workers-{workers}", **load)
    assert result is not None  # noqa: S101 (reports were asked for)
    after = CpuSnapshot.take(children(master))
    end = time.time()
    cpus = usable_cpus()

    def cores(cpu_seconds: float) -> float:
        # CPU per request times requests per second: the cores a part used while the load
        # ran. The snapshots also span Locust's start and stop, when little runs: dividing
        # by their span instead would understate every part.
        return (
            cpu_seconds / result.requests * result.requests_per_second if result.requests else 0.0
        )

    busy = cores(after.busy - before.busy)
    worker_cores = cores(after.since(before, "workers"))
    postgres = cores(after.since(before, "postgres"))
    nginx = cores(after.since(before, "nginx"))
    locust = cores(result.locust_cpu * result.seconds)
    other = busy - worker_cores - locust - postgres - nginx
    step = Step(
        workers=workers,
        requests_per_second=result.requests_per_second,
        p50_ms=result.p50_ms,
        p95_ms=result.p95_ms,
        p99_ms=result.p99_ms,
        failure_ratio=result.failure_ratio,
        locust_cpu=locust,
        locust_processes=result.locust_processes,
        machine_cpu=min(1.0, busy / cpus),
        postgres_cpu=postgres,
        nginx_cpu=nginx,
        other_cpu=max(0.0, other),
        cpu_cap=args.cpu_per_worker,
        cpus=cpus,
        worker_cpu=worker_cores / workers / (args.cpu_per_worker or 1.0),
        total_worker_cpu=worker_cores,
        pool_in_use=0.0,
        pool_wait_p99_ms=0.0,
    )
    return step, (start, end)


@contextlib.contextmanager
def lab_caps(cpu_per_worker: float, name: str) -> Iterator[None]:
    """Every worker of the running stack capped at `cpu_per_worker` while the block runs
    (nothing when 0); the caps are lifted after, whatever happens."""
    if not cpu_per_worker:
        yield
        return
    try:
        caps = CpuCaps.create(name, cpu_per_worker)
    except CpuCapsUnavailableError as exc:
        raise SystemExit(f"sweep: cannot cap the workers' CPU: {exc}") from None
    master = master_pid()
    keeper = CapKeeper(caps, lambda: children(master))
    try:
        with keeper.running():
            print(
                f"sweep: workers capped at {cpu_per_worker:g} CPU each "
                f"({caps.hierarchy.version_name}, {caps.parent})",
                flush=True,
            )
            yield
    except CpuCapsLeftBehindError as exc:
        # The measurements stand: every worker runs uncapped again.
        print(f"sweep: warning: {exc}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    """The command line, checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="", help='e.g. "1 2 4" (default 1..2x CPUs)')
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument(
        "--prometheus",
        default=f"http://127.0.0.1:{os.environ.get('PROMETHEUS_PORT', '9090')}",
    )
    parser.add_argument(
        "--users", type=int, default=None,
        help=f"concurrent users at every step (default {DEFAULT_USERS}; with --cpu-per-worker, "
        f"{LAB_USERS_PER_WORKER} per worker)",
    )  # fmt: skip
    parser.add_argument(
        "--spawn-rate", type=float, default=None,
        help="users started per second (default: all of them within the first second)",
    )  # fmt: skip
    parser.add_argument(
        "--run-time", type=int, default=DEFAULT_RUN_TIME, help="seconds per worker count"
    )
    parser.add_argument("--warmup", type=int, default=5, help="seconds before each run")
    parser.add_argument(
        "--rounds", type=int, default=int(os.environ.get("ROUNDS") or 1),
        help="measure every count this many times, up and down the counts; report medians",
    )  # fmt: skip
    parser.add_argument("--processes", type=int, default=None, help="Locust processes")
    parser.add_argument(
        "--cpu-per-worker", type=float, default=float(os.environ.get("CPU_PER_WORKER") or 0),
        help="the scaling lab: cap every worker at this fraction of a CPU (cgroups; root)",
    )  # fmt: skip
    parser.add_argument(
        "--plan-cores", type=int, default=int(os.environ.get("PLAN_CORES") or 0),
        help="the host size the capacity plan projects onto (default: this machine's CPUs)",
    )  # fmt: skip
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
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.cpu_per_worker < 0:
        parser.error("--cpu-per-worker must be a positive fraction of a CPU")
    if args.users is None and not args.cpu_per_worker:
        args.users = DEFAULT_USERS
    if args.processes is None:
        args.processes = default_processes()
    if args.processes < 1 or args.processes > (args.users or LAB_USERS_PER_WORKER):
        parser.error("--processes must be between 1 and the users")
    if args.plan_cores < 0:
        parser.error("--plan-cores must be a positive number of cores")
    args.counts = [int(n) for n in args.workers.split()] or default_worker_counts(
        args.cpu_per_worker
    )
    if any(n < 1 for n in args.counts):
        parser.error("worker counts must be at least 1")
    return args


def main() -> None:
    """Command line: sweep, report, restore."""
    args = parse_args()
    out_dir = args.out or RESULTS / f"sweep-{make_timestamp()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    original = len(children(master_pid()))
    measured: list[Step] = []
    windows: list[tuple[float, float]] = []
    notes: list[str] = []
    # Rounds go up the counts, then down, and so on: a machine that drifts faster or slower
    # during the sweep then weighs on every count alike.
    order = [
        workers
        for round_ in range(args.rounds)
        for workers in (args.counts if round_ % 2 == 0 else reversed(args.counts))
    ]
    started = time.time()
    try:
        with lab_caps(args.cpu_per_worker, "notes-lab"):
            for index, workers in enumerate(order, start=1):
                prefix = f"sweep [{index}/{len(order)}] {workers} workers:"
                step, window = measure(args, workers, out_dir, prefix)
                measured.append(step)
                windows.append(window)
                print(
                    f"{prefix} {step.requests_per_second:.0f} req/s, p99 {step.p99_ms:g} ms, "
                    f"{step.failure_ratio:.2%} failed, workers at {step.worker_cpu:.0%} of "
                    f"{'their cap' if step.cpu_cap else 'a core'}, machine at "
                    f"{step.machine_cpu:.0%}",
                    flush=True,
                )
    finally:
        scale(original)
    finished = time.time()
    time.sleep(6)  # let Prometheus take the scrape that closes the last window
    prometheus = Prometheus(args.prometheus)
    for index, (start, end) in enumerate(windows):
        pools = observe(prometheus, start, end)
        measured[index] = dataclasses.replace(
            measured[index],
            pool_in_use=pools["pool_in_use"],
            pool_wait_p99_ms=pools["pool_wait_p99_ms"],
        )
    steps = [median_step([s for s in measured if s.workers == n]) for n in args.counts]

    chosen, reason = recommend(steps, args.max_p99_ms, args.max_failure_ratio)
    write_csv(out_dir / "sweep.csv", steps)
    if args.rounds > 1:
        write_csv(out_dir / "rounds.csv", measured)
    cores = args.plan_cores or usable_cpus()
    budget = database_budget(chosen.workers)
    plan = capacity_plan(steps, cores, budget.pools)
    plan_note = (
        f"Projected onto {cores} cores ({'--plan-cores' if args.plan_cores else 'this machine'}"
        "'s); pass `PLAN_CORES=N` to `make sweep` (or `--plan-cores N`) for another host size."
    )
    knee = predicted_knee(steps)
    if any(load_generator_saturated(s.locust_cpu, s.locust_processes) for s in steps):
        notes.append("Locust limited at least one step: raise LOCUST_PROCESSES")
    if not args.cpu_per_worker:
        notes.append(
            f"Locust, PostgreSQL and nginx share this machine's {usable_cpus()} CPUs with the "
            "workers: the curve shows this machine, not the workers alone (the capacity plan "
            "separates them)."
        )
    sweep_report.write_charts(steps, out_dir, knee)
    rendered = render_rows(prometheus, started, finished, out_dir)
    for row in rendered:
        if row.empty_panels:
            notes.append(f"dashboard row {row.title!r}: no data for {', '.join(row.empty_panels)}")
    report = sweep_report.Report(
        title=f"Worker sweep {out_dir.name}",
        steps=steps,
        chosen=chosen,
        reason=reason,
        budget=budget.exceeded() or f"connection budget ok: {budget.describe()}",
        plan=plan,
        plan_note=plan_note,
        knee=knee,
        knee_workers=knee_count(knee, args.counts) if knee is not None else None,
        notes=notes,
        rows=[(row.title, row.path) for row in rendered],
        window=(
            (f"{args.users} users" if args.users else f"{LAB_USERS_PER_WORKER} users per worker")
            + f", {args.run_time} s per step after {args.warmup} s of warm-up"
            + (f", {args.rounds} rounds (medians)" if args.rounds > 1 else "")
            + f"; {utc(started):%Y-%m-%d %H:%M:%S} to {utc(finished):%H:%M:%S} UTC."
        ),
    )
    text = sweep_report.markdown(report)
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.html").write_text(sweep_report.html_page(report, out_dir))
    (out_dir / "summary.json").write_text(
        json.dumps(
            {
                "recommended_workers": chosen.workers,
                "reason": reason,
                "predicted_knee": knee,
                "knee_workers": report.knee_workers,
                "plan": asdict(plan),
            },
            indent=2,
        )
        + "\n"
    )
    print(text)
    print(f"sweep: report in {out_dir / 'report.html'}; workers back to {original}")


def utc(stamp: float) -> datetime:
    """A Unix time as a UTC datetime."""
    return datetime.fromtimestamp(stamp, UTC)


def median_step(rounds: list[Step]) -> Step:
    """One count's figures over its rounds: the median of each."""
    if len(rounds) == 1:
        return rounds[0]
    figures = {
        field.name: statistics.median(getattr(step, field.name) for step in rounds)
        for field in fields(Step)
        if field.name not in ("workers", "locust_processes", "cpus", "cpu_cap")
    }
    return dataclasses.replace(rounds[0], **figures)


def write_csv(path: Path, steps: list[Step]) -> None:
    """One row per step, a column per figure."""
    names = [field.name for field in fields(Step)]
    rows = [",".join(names)] + [",".join(str(v) for v in asdict(s).values()) for s in steps]
    path.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
