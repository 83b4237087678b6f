"""What a worker sweep's measurements mean: what limited each step, which worker count to run,
where the scaling lab's caps put the knee, and a capacity plan for a host of N cores.

Pure functions of the figures `loadtest.sweep` measured, so that each rule can be read, and
tested, on its own.
"""

import dataclasses
import statistics
from dataclasses import dataclass

from loadtest.database_size import DatabaseSize
from loadtest.run import load_generator_saturated
from service.runtime.capacity import (
    MIN_WORKERS,
    ConnectionBudget,
    default_workers,
)

# "Within a few percent of the best" (run-to-run noise on a shared 2-core machine is ~3%).
NEAR_BEST = 0.95
CPU_BOUND = 0.85  # share of what a worker may use above which workers are the bottleneck
POOL_WAIT_BOUND_MS = 5.0  # pool wait p99 above which requests queue for a connection
POOL_BUSY_BOUND = 0.9  # share of the pools' connections in use above which the DB holds them
# Share of all CPUs busy above which the machine is the bottleneck (a shared 2-core virtual
# machine rarely shows more than 90% with everything on it saturated).
MACHINE_BOUND = 0.85


@dataclass(frozen=True)
class Step:
    """One worker count's figures. CPU figures are in cores (1.0 = one CPU kept busy)."""

    workers: int
    requests_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    failure_ratio: float
    worker_cpu: float  # mean share of what one worker may use (its cap, or one core)
    total_worker_cpu: float  # cores used by all workers together
    machine_cpu: float  # share of all this machine's CPUs busy (everything, not just workers)
    pool_in_use: float  # mean share of the pools' connections in use
    pool_wait_p99_ms: float
    locust_cpu: float  # cores Locust used, all its processes together
    locust_processes: int = 1
    postgres_cpu: float = 0.0  # cores
    nginx_cpu: float = 0.0  # cores
    other_cpu: float = 0.0  # cores busy outside the workers, Locust, PostgreSQL and nginx
    cpu_cap: float = 0.0  # the lab's cap per worker, in cores; 0 when uncapped
    cpus: int = 1  # CPUs of the machine the step ran on

    @property
    def worker_ms_per_request(self) -> float:
        """Milliseconds of worker CPU an answered request cost."""
        return _ms_per_request(self.total_worker_cpu, self.requests_per_second)

    @property
    def idle_cpu(self) -> float:
        """Cores idle during the step."""
        return max(0.0, self.cpus * (1 - self.machine_cpu))

    def limit(self) -> tuple[str, str]:
        """What limited this step: a short name, and the figures that say so."""
        if load_generator_saturated(self.locust_cpu, self.locust_processes):
            return "load generator", (
                f"Locust used {self.locust_cpu:.2f} cores in {self.locust_processes} "
                "process(es), so the stack was not pushed to its limit"
            )
        if self.worker_cpu >= CPU_BOUND:
            at = f"their {self.cpu_cap:g}-CPU cap" if self.cpu_cap else "one core each"
            return "workers' CPU", f"workers at {self.worker_cpu:.0%} of {at}"
        if self.machine_cpu >= MACHINE_BOUND:
            return "machine", (
                f"{self.machine_cpu:.0%} of {self.cpus} CPUs busy (workers "
                f"{self.total_worker_cpu:.2f} cores, Locust {self.locust_cpu:.2f}, PostgreSQL "
                f"{self.postgres_cpu:.2f}, nginx {self.nginx_cpu:.2f}); more workers only share "
                "the same CPUs"
            )
        if self.pool_in_use >= POOL_BUSY_BOUND and self.pool_wait_p99_ms >= POOL_WAIT_BOUND_MS:
            return "pool", (
                f"every connection busy and requests queued for one (pools "
                f"{self.pool_in_use:.0%} in use, wait p99 {self.pool_wait_p99_ms:.1f} ms) while "
                "CPUs were not saturated: a larger DB_POOL_SIZE helps if PostgreSQL has CPU to "
                f"spare (it used {self.postgres_cpu:.2f} cores)"
            )
        if self.pool_in_use >= POOL_BUSY_BOUND:  # busy connections, but nobody waits for one
            return "database", (
                f"pools {self.pool_in_use:.0%} in use: connections are held by PostgreSQL "
                f"(which used {self.postgres_cpu:.2f} cores), not by the workers' CPU"
            )
        return "offered load", "nothing saturated: more users would have got more throughput"


def _ms_per_request(cores: float, requests_per_second: float) -> float:
    return 1000 * cores / requests_per_second if requests_per_second > 0 else 0.0


def recommend(steps: list[Step], max_p99_ms: float, max_failure_ratio: float) -> tuple[Step, str]:
    """The smallest worker count within a few percent of the best throughput at an
    acceptable p99, two at least where two were measured, and the reason the curve flattens
    where it does."""
    healthy = [s for s in steps if s.p99_ms <= max_p99_ms and s.failure_ratio <= max_failure_ratio]
    if not healthy:
        best_p99 = min(steps, key=lambda s: s.p99_ms)
        return best_p99, (
            f"no worker count met p99 <= {max_p99_ms:g} ms with failures <= "
            f"{max_failure_ratio:.1%}; {best_p99.workers} had the lowest p99"
        )
    best = max(healthy, key=lambda s: s.requests_per_second)
    near = [s for s in healthy if s.requests_per_second >= NEAR_BEST * best.requests_per_second]
    chosen = min(near, key=lambda s: s.workers)
    floor = [s for s in healthy if s.workers == MIN_WORKERS]
    if chosen.workers < MIN_WORKERS and floor:
        # Two workers on the same machine serve what one does, give or take the noise.
        chosen = floor[0]
        reason = _reason(chosen, steps) + (
            f" (one worker served as much, but a recycled or reloaded worker would leave the "
            f"socket without one that accepts: run {MIN_WORKERS} at least)"
        )
        return chosen, reason
    return chosen, _reason(chosen, steps)


def _reason(chosen: Step, steps: list[Step]) -> str:
    name, figures = chosen.limit()
    if name == "workers' CPU" and chosen.workers == max(s.workers for s in steps):
        return (
            f"limited by the workers' CPU ({figures}) at the largest count measured: "
            "throughput still rises with workers, sweep further"
        )
    if name == "offered load" and any(s.workers > chosen.workers for s in steps):
        return "more workers added no throughput"
    return f"limited by the {name}: {figures}"


def predicted_knee(steps: list[Step]) -> float | None:
    """With capped workers, the worker count at which the caps add up to the CPU the rest of
    the machine leaves them; None for an uncapped sweep.

    Below the knee every worker runs at its cap c, and the machine's busy CPU grows with the
    throughput r as f + m·r: m is the CPU a request costs everything together, f what runs
    whatever the load (Prometheus, the sweep itself). A worker spends w of the m, so n workers
    at their caps serve n·c/w requests a second and keep f + m·n·c/w cores busy; the machine's
    C cores run out at n = (C - f)·w / (c·m). m and f come from a straight line through the
    steps whose workers ran at their caps (from one step alone: m = busy / r, f = 0).
    """
    at_cap = [
        s for s in steps if s.cpu_cap and s.requests_per_second > 0 and s.worker_cpu >= CPU_BOUND
    ]
    if not at_cap:
        return None
    rates = [s.requests_per_second for s in at_cap]
    busy = [s.machine_cpu * s.cpus for s in at_cap]
    if len(set(rates)) > 1:
        fit = statistics.linear_regression(rates, busy)
        per_request, fixed = fit.slope, max(0.0, fit.intercept)
    else:
        per_request, fixed = busy[0] / rates[0], 0.0
    worker = statistics.median(s.total_worker_cpu / s.requests_per_second for s in at_cap)
    step = at_cap[0]
    if per_request <= 0:
        return None
    return (step.cpus - fixed) * worker / (step.cpu_cap * per_request)


def knee_count(knee: float, counts: list[int]) -> int:
    """The measured worker count the recommendation should land on: the smallest whose
    throughput the knee puts within a few percent of the plateau's, that is n >= 95% of the
    knee (the largest measured, if none is)."""
    reaching = [n for n in sorted(counts) if n >= NEAR_BEST * knee]
    return reaching[0] if reaching else max(counts)


@dataclass(frozen=True)
class CapacityPlan:
    """What the sweep's figures project for a host of `cores` CPUs serving this API."""

    cores: int
    worker_ms: float  # worker CPU per request
    nginx_ms: float
    postgres_ms: float
    workers: int  # recommended workers on such a host
    requests_per_second: float  # projected throughput of that host
    database_cores: float  # PostgreSQL CPU that throughput needs
    budget: ConnectionBudget  # the connections of that host's workers
    database: DatabaseSize | None = None  # what PostgreSQL's cost was measured on

    @property
    def per_core(self) -> float:
        """Requests per second one core of workers carries."""
        return 1000 / self.worker_ms if self.worker_ms else 0.0

    def _measured_on(self) -> str:
        """PostgreSQL's cost per request, against the data it was measured on."""
        if self.database is None:
            return "PostgreSQL's cost was measured on a database of unknown size."
        largest = ", ".join(f"{name} ≈ {rows:,} rows" for name, rows, _ in self.database.tables)
        return (
            f"PostgreSQL's {self.postgres_ms:.2f} ms per request was measured on "
            f"{largest or 'empty tables'}: {self.database.working_set()}."
        )

    def describe(self) -> list[str]:
        """The plan, a sentence per line, for the report."""
        budget = self.budget
        hosts = budget.max_workers // self.workers if self.workers else 0
        beyond = (
            f"**{budget.max_workers} workers in all**, that is beyond {hosts} such host"
            f"{'s' if hosts != 1 else ''}"
        )
        return [
            f"A worker spends **{self.worker_ms:.2f} ms of CPU per request**: one core of "
            f"workers carries **{self.per_core:.0f} req/s**. nginx adds {self.nginx_ms:.2f} ms "
            f"and PostgreSQL {self.postgres_ms:.2f} ms per request.",
            f"A host of **{self.cores} cores** running the workers and nginx (PostgreSQL and the "
            f"load elsewhere): **{self.workers} workers**, about "
            f"**{self.requests_per_second:.0f} req/s** "
            f"({self.cores} cores / {self.worker_ms + self.nginx_ms:.2f} ms), for which "
            f"PostgreSQL needs about {self.database_cores:.1f} cores.",
            self._measured_on(),
            f"Connections: {budget.describe()}.",
            # Behind PgBouncer the workers' pools count against its client limit instead.
            f"A pooler (PgBouncer in transaction mode) becomes necessary beyond {beyond} on this "
            "database's max_connections."
            if budget.limit == "max_connections"
            else f"{budget.limit} must grow beyond {beyond}.",
        ]


def capacity_plan(
    steps: list[Step],
    cores: int,
    budget: ConnectionBudget,
    database: DatabaseSize | None = None,
) -> CapacityPlan:
    """Project the sweep's per-request costs (medians over its steps) onto `cores`; `budget`
    is the database's, for any worker count; `database` what they were measured on."""
    measured = [s for s in steps if s.requests_per_second > 0]
    worker_ms = statistics.median(s.worker_ms_per_request for s in measured)
    nginx_ms = statistics.median(
        _ms_per_request(s.nginx_cpu, s.requests_per_second) for s in measured
    )
    postgres_ms = statistics.median(
        _ms_per_request(s.postgres_cpu, s.requests_per_second) for s in measured
    )
    # The stack's own default on such a host: they share its CPU with nginx.
    workers = default_workers(cores)
    per_request = worker_ms + nginx_ms
    throughput = min(cores * 1000 / per_request, workers * 1000 / worker_ms) if worker_ms else 0.0
    return CapacityPlan(
        cores=cores,
        worker_ms=worker_ms,
        nginx_ms=nginx_ms,
        postgres_ms=postgres_ms,
        workers=workers,
        requests_per_second=throughput,
        database_cores=throughput * postgres_ms / 1000,
        budget=dataclasses.replace(budget, workers=workers),
        database=database,
    )
