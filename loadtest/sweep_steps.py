"""One step of a worker sweep, measured: scale the running stack, warm up, run the load, and
read what the workers, Locust, PostgreSQL, nginx and the pools did meanwhile."""

import functools
import time
from dataclasses import dataclass

import psutil

from deploy.native import gunicorn
from deploy.native.processes import StackError, children
from deploy.native.state import Stack
from deploy.prometheus.client import Prometheus
from loadtest.plan import Step
from loadtest.run import RunResult, run_locust
from loadtest.sweep_config import SweepConfig
from loadtest.thresholds import Thresholds
from service.runtime.capacity import usable_cpus

# Judged by the sweep's own figures, not Locust's gates: a step may break them.
LENIENT = Thresholds(max_failure_ratio=1.0, max_p95_ms=1e9, max_p99_ms=1e9)


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


@dataclass(frozen=True)
class Pools:
    """What the workers' pools did over a step, from their metrics in Prometheus."""

    in_use: float  # mean share of the pools' connections in use
    wait_p99_ms: float

    @classmethod
    def observe(cls, prometheus: Prometheus, interval: int, start: float, end: float) -> "Pools":
        """Over [start, end], from a Prometheus that scrapes every `interval` seconds and has
        scraped past `end`."""
        window = f"{max(2 * interval, int(end - start))}s"
        in_use = (
            "avg_over_time((sum(db_pool_connections_in_use) / sum(db_pool_connections_max))"
            f"[{window}:{interval}s])"
        )
        wait = (
            "1000 * histogram_quantile(0.99, sum by (le) "
            f"(increase(db_pool_wait_seconds_bucket[{window}])))"
        )
        return cls(in_use=prometheus.value(in_use, end), wait_p99_ms=prometheus.value(wait, end))


@dataclass(frozen=True)
class StepRun:
    """One step as it ran: Locust's figures, the cores each part of the machine used while the
    load ran, and when it ran. The pools' figures come later, once Prometheus has scraped
    past its end: `step` then makes the step's figures whole."""

    workers: int
    result: RunResult
    cpu_cap: float
    cpus: int
    busy: float  # cores busy on the whole machine
    worker_cores: float
    postgres_cores: float
    nginx_cores: float
    locust_cores: float
    start: float
    end: float

    @property
    def worker_cpu(self) -> float:
        """Mean share of what one worker may use (its cap, or one core)."""
        return self.worker_cores / self.workers / (self.cpu_cap or 1.0)

    @property
    def machine_cpu(self) -> float:
        """Share of all this machine's CPUs busy."""
        return min(1.0, self.busy / self.cpus)

    def progress(self) -> str:
        """The step in one line, as it ends."""
        return (
            f"{self.result.requests_per_second:.0f} req/s, p99 {self.result.p99_ms:g} ms, "
            f"{self.result.failure_ratio:.2%} failed, workers at {self.worker_cpu:.0%} of "
            f"{'their cap' if self.cpu_cap else 'a core'}, machine at {self.machine_cpu:.0%}"
        )

    def step(self, pools: Pools) -> Step:
        """The step's figures, with what its pools did."""
        parts = (self.worker_cores, self.locust_cores, self.postgres_cores, self.nginx_cores)
        other = self.busy
        for part in parts:
            other -= part
        return Step(
            workers=self.workers,
            requests_per_second=self.result.requests_per_second,
            p50_ms=self.result.p50_ms,
            p95_ms=self.result.p95_ms,
            p99_ms=self.result.p99_ms,
            failure_ratio=self.result.failure_ratio,
            locust_cpu=self.locust_cores,
            locust_processes=self.result.locust_processes,
            machine_cpu=self.machine_cpu,
            postgres_cpu=self.postgres_cores,
            nginx_cpu=self.nginx_cores,
            other_cpu=max(0.0, other),
            cpu_cap=self.cpu_cap,
            cpus=self.cpus,
            worker_cpu=self.worker_cpu,
            total_worker_cpu=self.worker_cores,
            pool_in_use=pools.in_use,
            pool_wait_p99_ms=pools.wait_p99_ms,
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


def measure(config: SweepConfig, workers: int, prefix: str) -> StepRun:
    """Scale to `workers`, warm up, run the load, and read what the processes did."""
    print(f"{prefix} scaling, warming up {config.warmup}s", flush=True)
    scale(workers)
    locust = functools.partial(
        run_locust,
        host=config.host,
        users=config.users_at(workers),
        spawn_rate=config.spawn_rate_at(workers),
        out_dir=config.out,
        thresholds=LENIENT,
        processes=config.processes,
    )
    if config.warmup:
        locust(seconds=config.warmup, tag=f"warmup-{workers}", reports=False)
    print(f"{prefix} measuring for {config.run_time}s", flush=True)
    start = time.time()
    master = master_pid()
    before = CpuSnapshot.take(children(master))
    result = locust(seconds=config.run_time, tag=f"workers-{workers}")
    assert result is not None  # noqa: S101 (reports were asked for)
    after = CpuSnapshot.take(children(master))
    end = time.time()

    def cores(cpu_seconds: float) -> float:
        # CPU per request times requests per second: the cores a part used while the load
        # ran. The snapshots also span Locust's start and stop, when little runs: dividing
        # by their span instead would understate every part.
        return (
            cpu_seconds / result.requests * result.requests_per_second if result.requests else 0.0
        )

    return StepRun(
        workers=workers,
        result=result,
        cpu_cap=config.cpu_per_worker,
        cpus=usable_cpus(),
        busy=cores(after.busy - before.busy),
        worker_cores=cores(after.since(before, "workers")),
        postgres_cores=cores(after.since(before, "postgres")),
        nginx_cores=cores(after.since(before, "nginx")),
        locust_cores=cores(result.locust_cpu * result.seconds),
        start=start,
        end=end,
    )
