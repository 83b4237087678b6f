"""What a worker sweep runs: its command line, checked once into a typed `SweepConfig`."""

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from deploy.loopback import loopback_only
from loadtest.run import (
    DEFAULT_HOST,
    DEFAULT_RUN_TIME,
    DEFAULT_SPAWN_RATE,
    DEFAULT_USERS,
    RESULTS,
    default_processes,
    timestamp,
)
from loadtest.sweep_gate import DEFAULT_MIN_SCALING, describe, parse_bounds, unjudgeable
from loadtest.thresholds import Thresholds
from service.runtime.capacity import usable_cpus

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


@dataclass(frozen=True)
class SweepConfig:
    """A sweep's settings, checked: the counts, the load of each step, where to write, and
    the scaling bounds the lab's gate holds the figures to (None: no gate)."""

    counts: list[int]
    host: str
    prometheus: str
    users: int | None  # every step's users; None in the lab: LAB_USERS_PER_WORKER per worker
    spawn_rate: float | None  # None: every user within the first second
    run_time: int
    warmup: int
    rounds: int
    processes: int
    cpu_per_worker: float  # the lab's cap per worker; 0 when uncapped
    plan_cores: int  # 0: this machine's CPUs
    max_p99_ms: float
    max_failure_ratio: float
    out: Path
    gate: dict[int, float] | None

    def users_at(self, workers: int) -> int:
        """The users of a step: the same at every step, or in the lab the same per worker."""
        return self.users or LAB_USERS_PER_WORKER * workers

    def spawn_rate_at(self, workers: int) -> float:
        """Users started per second: every step's run counts from the first user, and a slow
        ramp would eat into it."""
        return self.spawn_rate or max(DEFAULT_SPAWN_RATE, self.users_at(workers))

    @property
    def order(self) -> list[int]:
        """Every step's worker count, in the order run: up the counts, then down, and so on,
        so that a machine that drifts faster or slower weighs on every count alike."""
        return [
            workers
            for round_ in range(self.rounds)
            for workers in (self.counts if round_ % 2 == 0 else reversed(self.counts))
        ]

    def describe_load(self) -> str:
        """Each step's load in words, for the report."""
        return (
            (f"{self.users} users" if self.users else f"{LAB_USERS_PER_WORKER} users per worker")
            + f", {self.run_time} s per step after {self.warmup} s of warm-up"
            + (f", {self.rounds} rounds (medians)" if self.rounds > 1 else "")
        )


def parser() -> argparse.ArgumentParser:
    """The command line's options, with their defaults (some from the environment)."""
    parser = argparse.ArgumentParser(
        description="make sweep: the same load at several worker counts, what limited each, "
        "which count to run, and a capacity plan"
    )
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
    parser.add_argument(
        "--check", action="store_true",
        help="the lab's gate: exit 1 when the workers scaled below --min-scaling "
        "(loadtest/sweep_gate.py)",
    )  # fmt: skip
    parser.add_argument(
        "--min-scaling", type=parse_bounds, default=None,
        help=f'N:X, N workers at least X times one (implies --check; default '
        f'"{describe(DEFAULT_MIN_SCALING)}")',
    )  # fmt: skip
    return parser


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    """The command line, checked; exits 2 with the reason when it cannot be run."""
    options = parser()
    args = options.parse_args(argv)
    try:
        loopback_only(args.host)
        loopback_only(args.prometheus)
    except ValueError as exc:
        options.error(str(exc))
    if args.rounds < 1:
        options.error("--rounds must be at least 1")
    if args.cpu_per_worker < 0:
        options.error("--cpu-per-worker must be a positive fraction of a CPU")
    users = args.users if args.users is not None or args.cpu_per_worker else DEFAULT_USERS
    processes = args.processes if args.processes is not None else default_processes()
    if processes < 1 or processes > (users or LAB_USERS_PER_WORKER):
        options.error("--processes must be between 1 and the users")
    if args.plan_cores < 0:
        options.error("--plan-cores must be a positive number of cores")
    counts = [int(n) for n in args.workers.split()] or default_worker_counts(args.cpu_per_worker)
    if any(n < 1 for n in counts):
        options.error("worker counts must be at least 1")
    gate = args.min_scaling or (DEFAULT_MIN_SCALING if args.check else None)
    if gate is not None:
        # Refused before the first step, not after minutes of load.
        problem = unjudgeable(counts, args.cpu_per_worker, gate)
        if problem:
            options.error(f"--check: {problem}")
    return SweepConfig(
        counts=counts,
        host=args.host,
        prometheus=args.prometheus,
        users=users,
        spawn_rate=args.spawn_rate,
        run_time=args.run_time,
        warmup=args.warmup,
        rounds=args.rounds,
        processes=processes,
        cpu_per_worker=args.cpu_per_worker,
        plan_cores=args.plan_cores,
        max_p99_ms=args.max_p99_ms,
        max_failure_ratio=args.max_failure_ratio,
        out=args.out or RESULTS / f"sweep-{timestamp()}",
        gate=gate,
    )
