"""`make sweep`: the same Locust load at several worker counts, what limited each, which
count to run, and a capacity plan.

    uv run python -m loadtest.sweep [--workers "1 2 4"] [--users 50] [--run-time 30]
        [--warmup 5] [--rounds 1] [--max-p99-ms 500] [--processes N] [--cpu-per-worker 0.2]
        [--plan-cores N] [--check] [--min-scaling "2:1.8 4:3.2"]

For each worker count: scale the running stack live, warm up, run the load, and read from
Prometheus and from the processes what the workers, the pool, Locust, PostgreSQL and nginx did
meanwhile (`loadtest.sweep_steps`). Writes sweep.csv, report.md, report.html (one page, charts
inline), the charts and the dashboard's rows rendered over the sweep under
loadtest/results/sweep-<timestamp>/ (`loadtest.sweep_report`), then puts the worker count back.

`--cpu-per-worker` is the scaling lab: every worker runs in a cgroup of its own capped at that
fraction of a CPU, so that a small machine has CPU to spare beside the workers and shows the
shape a big host has: throughput rising with workers until the caps add up to what the rest of
the machine leaves them, flat after. `--check` holds the lab's figures to its gate
(`loadtest.sweep_gate`) and exits 1 when they fall short.
"""

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import fields, replace
from datetime import UTC, datetime

from deploy.grafana.render import RowImage, render_rows
from deploy.native.cpu_caps import (
    CapKeeper,
    CpuCaps,
    CpuCapsLeftBehindError,
    CpuCapsUnavailableError,
)
from deploy.native.processes import children
from deploy.native.state import Stack
from deploy.prometheus.client import Prometheus
from loadtest import sweep_gate, sweep_report
from loadtest.database_size import BufferReads, buffer_reads, database_size
from loadtest.plan import Step, capacity_plan, knee_count, predicted_knee, recommend
from loadtest.run import load_generator_saturated
from loadtest.sweep_config import SweepConfig, parse_args
from loadtest.sweep_steps import Pools, StepRun, master_pid, measure, scale
from service.config import WorkerSettings, load
from service.runtime.capacity import connection_budget, usable_cpus


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


def scrape_interval(prometheus: Prometheus, run_time: int) -> int:
    """How often `prometheus` scrapes, asked before the first step: a step shorter than two
    scrapes has no window of its own, and a Prometheus that does not answer would only be
    found out after minutes of load."""
    try:
        interval = prometheus.scrape_interval()
    except OSError as exc:
        raise SystemExit(f"sweep: no answer from Prometheus at {prometheus.url}: {exc}") from None
    if run_time < 2 * interval:
        raise SystemExit(
            f"sweep: --run-time must be at least {2 * interval} s: the Prometheus at "
            f"{prometheus.url} scrapes every {interval} s"
        )
    return interval


def run_steps(config: SweepConfig, original: int) -> list[StepRun]:
    """Every step of every round, under the lab's caps if any; the worker count is put back
    to `original` after, whatever happens."""
    order = config.order
    runs = []
    try:
        with lab_caps(config.cpu_per_worker, f"{load(WorkerSettings).stack_name}-lab"):
            for index, workers in enumerate(order, start=1):
                prefix = f"sweep [{index}/{len(order)}] {workers} workers:"
                run = measure(config, workers, prefix)
                runs.append(run)
                print(f"{prefix} {run.progress()}", flush=True)
    finally:
        scale(original)
    return runs


def median_step(rounds: list[Step]) -> Step:
    """One count's figures over its rounds: the median of each."""
    if len(rounds) == 1:
        return rounds[0]
    figures = {
        field.name: statistics.median(getattr(step, field.name) for step in rounds)
        for field in fields(Step)
        if field.name not in ("workers", "locust_processes", "cpus", "cpu_cap")
    }
    return replace(rounds[0], **figures)


def utc(stamp: float) -> datetime:
    """A Unix time as a UTC datetime."""
    return datetime.fromtimestamp(stamp, UTC)


def conclude(
    config: SweepConfig,
    measured: list[Step],
    rendered: list[RowImage],
    window: tuple[float, float],
    blocks: BufferReads | None = None,
) -> sweep_report.Report:
    """What the sweep's figures mean: the medians, the recommendation, the knee, the capacity
    plan and the caveats, as the report says them."""
    steps = [median_step([s for s in measured if s.workers == n]) for n in config.counts]
    chosen, reason = recommend(steps, config.max_p99_ms, config.max_failure_ratio)
    cores = config.plan_cores or usable_cpus()
    stack = Stack.from_environment()
    budget = connection_budget(stack.app_settings(), chosen.workers)
    size = database_size(stack.service_env()["DATABASE_URL"])
    size = size.during(blocks) if size else None
    knee = predicted_knee(steps)
    notes = []
    if any(load_generator_saturated(s.locust_cpu, s.locust_processes) for s in steps):
        notes.append("Locust limited at least one step: raise LOCUST_PROCESSES")
    if not config.cpu_per_worker:
        notes.append(
            f"Locust, PostgreSQL and nginx share this machine's {usable_cpus()} CPUs with the "
            "workers: the curve shows this machine, not the workers alone (the capacity plan "
            "separates them)."
        )
    notes += [
        f"dashboard row {row.title!r}: no data for {', '.join(row.empty_panels)}"
        for row in rendered
        if row.empty_panels
    ]
    started, finished = window
    return sweep_report.Report(
        title=f"Worker sweep {config.out.name}",
        steps=steps,
        chosen=chosen,
        reason=reason,
        budget=budget.exceeded() or f"connection budget ok: {budget.describe()}",
        plan=capacity_plan(steps, cores, budget.pools, size),
        plan_note=(
            f"Projected onto {cores} cores "
            f"({'--plan-cores' if config.plan_cores else 'this machine'}'s); pass "
            "`PLAN_CORES=N` to `make sweep` (or `--plan-cores N`) for another host size."
        ),
        knee=knee,
        knee_workers=knee_count(knee, config.counts) if knee is not None else None,
        notes=notes,
        rows=[(row.title, row.path) for row in rendered],
        window=(
            f"{config.describe_load()}; "
            f"{utc(started):%Y-%m-%d %H:%M:%S} to {utc(finished):%H:%M:%S} UTC."
        ),
        rounds=measured if config.rounds > 1 else [],
        database=size.describe() if size else "The database's size could not be read.",
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: sweep, restore, report; with a gate, its verdict as the exit status."""
    config = parse_args(argv)
    prometheus = Prometheus(config.prometheus)
    interval = scrape_interval(prometheus, config.run_time)
    config.out.mkdir(parents=True, exist_ok=True)
    original = len(children(master_pid()))
    blocks = buffer_reads(Stack.from_environment().service_env()["DATABASE_URL"])
    started = time.time()
    runs = run_steps(config, original)
    finished = time.time()
    # Let Prometheus take the scrape that closes the last window.
    time.sleep(interval + 1)
    measured = [run.step(Pools.observe(prometheus, interval, run.start, run.end)) for run in runs]
    rendered = render_rows(prometheus, started, finished, config.out)
    report = conclude(config, measured, rendered, (started, finished), blocks)
    print(sweep_report.write(report, config.out))
    print(f"sweep: report in {config.out / 'report.html'}; workers back to {original}")
    if config.gate is None:
        return 0
    return sweep_gate.verdict(
        sweep_gate.judge(
            report.steps,
            recommended=report.chosen.workers,
            knee=report.knee,
            knee_workers=report.knee_workers,
            bounds=config.gate,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
