"""Prometheus metrics: the definitions, per-worker samples and /metrics.

In a gunicorn deployment every worker writes to PROMETHEUS_MULTIPROC_DIR and any worker can
answer a scrape with the sum over all of them (see `metrics_store`). Multiprocess mode drops
the `process_*` collectors, so per-worker CPU and memory are sampled here.
"""

import asyncio
import contextlib
import functools
import os
import platform
import resource
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as generate_single_process

from service.config import RunDirSettings, load
from service.observability import metrics_store
from service.runtime.cgroups import cpu_allowance

metrics_store.cache_pid_for_values()

# Reads by id take about a millisecond: resolve well below it, and up to timeouts above.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
POOL_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from a request reaching the app to its response being sent.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_PROGRESS = Gauge(
    "http_requests_in_progress",
    "HTTP requests being served now (each worker's, sampled every second).",
    ["method", "route"],
    multiprocess_mode="livesum",
)

# The pool of every SQLAlchemy engine the app makes, by the engine's label
# (service.stack.engines), sampled every second.
POOL_IN_USE = Gauge(
    "db_pool_connections_in_use",
    "Database connections checked out of an engine's pool in a worker now.",
    ["engine"],
    multiprocess_mode="liveall",
)
POOL_IDLE = Gauge(
    "db_pool_connections_idle",
    "Open database connections idle in an engine's pool in a worker.",
    ["engine"],
    multiprocess_mode="liveall",
)
POOL_OVERFLOW = Gauge(
    "db_pool_connections_overflow",
    "Connections an engine's pool in a worker holds beyond its size (closed when returned).",
    ["engine"],
    multiprocess_mode="liveall",
)
POOL_MAX = Gauge(
    "db_pool_connections_max",
    "Connections an engine's pool in a worker may hold (its size plus its overflow).",
    ["engine"],
    multiprocess_mode="liveall",
)
# The notes service's FIFO gate in front of its pool (service.database.connections).
POOL_WAITING = Gauge(
    "db_pool_waiting_requests",
    "Requests of a worker waiting for a database connection now.",
    multiprocess_mode="liveall",
)
POOL_WAIT = Histogram(
    "db_pool_wait_seconds",
    "Time a request waited for a database connection.",
    buckets=POOL_WAIT_BUCKETS,
)
POOL_TIMEOUTS = Counter(
    "db_pool_timeouts_total", "Requests that got no database connection within DB_POOL_TIMEOUT."
)

WORKER_CPU = Gauge(
    "worker_cpu_seconds",
    "CPU time (user + system) a worker has used since it started; rate() gives its CPU use.",
    multiprocess_mode="liveall",
)
WORKER_CPU_LIMIT = Gauge(
    "worker_cpu_limit_cores",
    "The most CPU a worker may use, in cores: its cgroup's CPU quota (a container's limit, or "
    "the scaling lab's cap), else the CPUs it may run on.",
    multiprocess_mode="liveall",
)
WORKER_MEMORY = Gauge(
    "worker_resident_memory_bytes", "A worker's resident memory.", multiprocess_mode="liveall"
)
WORKERS_LIVE = Gauge(
    "app_workers_live", "Worker processes serving now.", multiprocess_mode="livesum"
)
BUILD_INFO = Gauge(
    "app_build_info",
    "Always 1; the labels say what runs.",
    ["version", "python_version"],
    multiprocess_mode="livemax",
)

# Also the age, at most, of http_requests_in_progress (service.observability.requests).
SAMPLE_INTERVAL_SECONDS = 1.0
_PAGE_SIZE = resource.getpagesize()


def _sample_worker() -> None:
    times = os.times()
    WORKER_CPU.set(times.user + times.system)
    WORKER_CPU_LIMIT.set(cpu_allowance())
    with open("/proc/self/statm", "rb") as statm:
        WORKER_MEMORY.set(int(statm.read().split()[1]) * _PAGE_SIZE)


# What else the worker samples with its own gauges: added and removed by the app's lifespan
# (the notes service's requests waiting for a connection), read by `worker_metrics`.
_extra_samplers: list[Callable[[], None]] = []


@contextlib.contextmanager
def sampled(sampler: Callable[[], None]) -> Iterator[None]:
    """Have the worker call `sampler` every second, with its other gauges, for a while."""
    _extra_samplers.append(sampler)
    try:
        yield
    finally:
        _extra_samplers.remove(sampler)


@contextlib.asynccontextmanager
async def worker_metrics(
    version: str, samplers: Sequence[Callable[[], None]]
) -> AsyncIterator[None]:
    """For a worker's lifetime: count it as live, and sample its CPU and memory, whatever
    `samplers` record (its engines' pools, its requests in flight) and what the app added."""
    WORKERS_LIVE.set(1)
    BUILD_INFO.labels(version, platform.python_version()).set(1)

    async def sample_forever() -> None:
        while True:
            _sample_worker()
            for sample in (*samplers, *_extra_samplers):
                sample()
            await asyncio.sleep(SAMPLE_INTERVAL_SECONDS)

    sampler = asyncio.create_task(sample_forever())
    try:
        yield
    finally:
        sampler.cancel()
        WORKERS_LIVE.set(0)


async def render_metrics() -> bytes:
    """Every worker's metrics summed (multiprocess), or this process's alone."""
    directory = metrics_store.configured_multiprocess_dir()
    if directory is None:
        return generate_single_process(REGISTRY)
    # Reading the files is blocking I/O: keep it off the event loop.
    return await asyncio.to_thread(metrics_store.render, directory, (_run_dir(),))


@functools.cache
def _run_dir() -> Path:
    """The run directory, whose filesystem's free space /metrics reports."""
    return load(RunDirSettings).run_dir
