"""What every `make bench` comparison shares: a database of its own with the same rows, wrk,
free ports, and paired rounds read as the median of their ratios.

This shared 2-core machine's throughput drifts by ±30% from one minute to the next; two runs
seconds apart see nearly the same machine, so a ratio is taken round by round, between the
contenders of that round, and the median of those is what a comparison reports. Each round
also counts the CPU every process of a contender used (the kernel's counters, at both ends of
the run): what a request costs each part, which a busy neighbour disturbs less than the rate.
"""

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg
import psutil

from deploy.native.processes import children_cpu_seconds
from deploy.native.seed import seed

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

# Reads by random id, as wrk's Lua script: every id exists.
READ = """
math.randomseed(os.time())
local rows = tonumber(os.getenv("BENCH_ROWS"))
request = function()
  return wrk.format("GET", "/api/v1/notes/" .. math.random(1, rows))
end
"""


# wrk's latency units, in milliseconds.
MILLISECONDS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run measured."""

    rate: float
    requests: int
    p99_ms: float


def wrk(port: int, seconds: int, script: str, env: dict[str, str], connections: int = 32) -> WrkRun:
    """One wrk run (one thread) of `script` against :`port`; any non-2xx answer or socket
    error stops the benchmark."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        output = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua.name,
             f"http://127.0.0.1:{port}"],
            env={**os.environ, **env}, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    if "Non-2xx" in output or "Socket errors" in output:
        raise SystemExit(f"wrk saw errors against :{port}:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", output, re.MULTILINE)
    if p99 is None:
        raise SystemExit(f"wrk printed no p99:\n{output}")
    return WrkRun(rate, requests, float(p99.group(1)) * MILLISECONDS[p99.group(2)])


def median_ratio(mine: list[float], theirs: list[float]) -> float:
    """The median of round-by-round ratios `mine / theirs`: each pair ran seconds apart,
    under the same noise."""
    return statistics.median(a / b for a, b in zip(mine, theirs, strict=True))


Contender = TypeVar("Contender")


def schedule(contenders: Sequence[Contender], rounds: int) -> Iterator[tuple[int, Contender]]:
    """Round 0 (a warm-up, not counted), then rounds 1 to `rounds`: every contender once a
    round, the order reversed every other round so that none always runs first."""
    for number in range(rounds + 1):
        for contender in contenders if number % 2 else contenders[::-1]:
            yield number, contender


@dataclass(frozen=True)
class Round:
    """One wrk run against one contender: its rate, and the CPU seconds each of its parts (a
    name for a set of processes), wrk and the whole machine used meanwhile."""

    rate: float
    requests: int
    p99_ms: float
    cpu_seconds: dict[str, float]
    # Each part's voluntary context switches: how often its processes went to sleep.
    sleeps: dict[str, int]
    machine_busy: float
    wall: float

    def sleeps_per_request(self, part: str) -> float | None:
        """How often `part`'s processes slept (waited for an event) per request."""
        sleeps = self.sleeps.get(part)
        return None if sleeps is None else sleeps / self.requests

    def cpu_ms(self, part: str) -> float | None:
        """Milliseconds of CPU `part` spent per request; None if the contender has no such
        part."""
        seconds = self.cpu_seconds.get(part)
        return None if seconds is None else 1000 * seconds / self.requests

    def total_cpu_ms(self) -> float:
        """Milliseconds of CPU per request, all parts and wrk together."""
        return 1000 * sum(self.cpu_seconds.values()) / self.requests

    def busy_cores(self) -> float:
        """How many of the machine's CPUs were busy, neighbours included."""
        return self.machine_busy / self.wall


def median_of(rounds: list[Round], value: Callable[[Round], float | None]) -> float | None:
    """The median of `value` over the rounds that have it."""
    values = [v for one in rounds if (v := value(one)) is not None]
    return statistics.median(values) if values else None


def measure(
    port: int,
    parts: Callable[[], dict[str, list[int]]],
    *,
    script: str,
    env: dict[str, str],
    seconds: int,
    connections: int = 32,
) -> Round:
    """One wrk run against :`port`, with the CPU and sleeps of each part's processes (asked
    for at both ends: one that began during the run counts whole), and the CPU of wrk and of
    the machine meanwhile."""
    before = {part: _counters(pids) for part, pids in parts().items()}
    busy, reaped, started = _busy(), children_cpu_seconds(), time.monotonic()
    run = wrk(port, seconds, script, env, connections)
    wall, busy, wrk_cpu = (
        time.monotonic() - started,
        _busy() - busy,
        children_cpu_seconds() - reaped,
    )
    after = {part: _counters(pids) for part, pids in parts().items()}
    used, sleeps = {}, {}
    for part, counters in after.items():
        earlier = before.get(part, {})
        used[part] = sum(cpu - earlier.get(pid, (0.0, 0))[0] for pid, (cpu, _) in counters.items())
        sleeps[part] = sum(n - earlier.get(pid, (0.0, 0))[1] for pid, (_, n) in counters.items())
    used["wrk"] = wrk_cpu  # wrk is the only child reaped meanwhile
    return Round(run.rate, run.requests, run.p99_ms, used, sleeps, busy, wall)


def _counters(pids: list[int]) -> dict[int, tuple[float, int]]:
    """CPU seconds and voluntary context switches of each live process of `pids`."""
    counters = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                times, switches = process.cpu_times(), process.num_ctx_switches()
        except psutil.Error:
            continue
        counters[pid] = (times.user + times.system, switches.voluntary)
    return counters


def _busy() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages, with its CPU count: how busy the
    neighbours kept it while a benchmark measured."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} CPUs"


@dataclass(frozen=True)
class BenchDatabase:
    """A database made for one benchmark: SQLAlchemy's URL (what the service reads) and
    asyncpg's DSN (what the hand-written contenders and the harness use)."""

    url: str
    dsn: str
    name: str


@contextmanager
def bench_database(rows: int) -> Iterator[BenchDatabase]:
    """A fresh database on DATABASE_URL's server, migrated to head and seeded with `rows`
    notes (`make seed`'s statement, then ANALYZE); dropped when the block ends."""
    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    name = f"notes_bench_{uuid.uuid4().hex[:8]}"
    base = server.rsplit("/", 1)[0]
    admin = f"{base}/postgres".replace("+asyncpg", "")
    database = BenchDatabase(f"{base}/{name}", f"{base}/{name}".replace("+asyncpg", ""), name)
    asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
    try:
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database.url},
            check=True,
            capture_output=True,
        )
        if rows:
            asyncio.run(seed(database.url, rows))
        yield database
    finally:
        asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        # The app role a stack's `up` made for it (deploy.native.postgres), if one ran on it.
        asyncio.run(_execute(admin, f'DROP ROLE IF EXISTS "{name}_app"'))


async def _execute(dsn: str, statement: str, *args: object) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()
