"""`make bench`: the service against the same endpoints written by hand, side by side.

Every contender runs as one uvicorn worker (uvloop, httptools) on one database with the same
rows; wrk (one thread, 32 connections) loads each in turn, and the rounds alternate so that
the machine's noise hits all of them alike. Printed, with every ratio:

    reads    GET /api/v1/notes/{id}, random ids: bare Starlette + asyncpg, FastAPI + asyncpg,
             the service as deployed (access line at INFO, multiprocess metrics), and the
             service with its access line and request metrics off, and the service through
             PgBouncer (transaction mode, DB_POOLER=pgbouncer) and straight to PostgreSQL with
             the statement cache off as behind it: what the pooler costs, and why
    writes   POST, and PATCH with a current If-Match: Starlette + asyncpg against the service
    memory   the service worker's resident memory after all of that
    start    seconds from a gunicorn worker's fork to its ready marker

    uv run python -m loadtest.bench.endpoints [--seconds 8] [--rounds 5] [--rows 10000]

DATABASE_URL names a server; the benchmark makes and drops its own database there.
"""

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import psutil

from deploy.native import pgbouncer
from service.runtime.layout import GunicornLayout

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

READ = """
math.randomseed(os.time())
local rows = tonumber(os.getenv("BENCH_ROWS"))
request = function()
  return wrk.format("GET", "/api/v1/notes/" .. math.random(1, rows))
end
"""
CREATE = """
request = function()
  return wrk.format("POST", "/api/v1/notes", {["Content-Type"] = "application/json"},
    '{"text": "a note written by the benchmark"}')
end
"""
# Each contender patches its own ids in turn, with the versions the database had before the
# run, so every If-Match is current (a note comes round again only after all the others). It
# lists every version since the run began: wrk builds a request or two that it never sends,
# and the database's version may then be one behind this count.
UPDATE = """
local ids, first, versions, next = {}, {}, {}, 0
for line in io.lines(os.getenv("BENCH_VERSIONS")) do
  local id, version = line:match("(%d+) (%d+)")
  ids[#ids + 1] = id
  first[id], versions[id] = tonumber(version), tonumber(version)
end
request = function()
  next = next % #ids + 1
  local id = ids[next]
  local tags = {}
  for version = first[id], versions[id] do
    tags[#tags + 1] = '"' .. id .. '-' .. version .. '"'
  end
  versions[id] = versions[id] + 1
  return wrk.format("PATCH", "/api/v1/notes/" .. id,
    {["Content-Type"] = "application/json", ["If-Match"] = table.concat(tags, ", ")},
    '{"completed": true}')
end
"""


@dataclass(frozen=True)
class Contender:
    """One server under test: its uvicorn app argument and port."""

    label: str
    app: list[str]
    port: int
    env: dict[str, str]


def wrk(port: int, seconds: int, script: str, env: dict[str, str]) -> tuple[float, str]:
    """Requests per second and p99 of one wrk run; any non-2xx answer stops the benchmark."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        output = subprocess.run(
            ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", lua.name,
             f"http://127.0.0.1:{port}"],
            env={**os.environ, **env}, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    if "Non-2xx" in output or "Socket errors" in output:
        raise SystemExit(f"wrk saw errors against :{port}:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1)  # type: ignore[union-attr]
    return rate, p99


@contextmanager
def serving(contender: Contender) -> Iterator[subprocess.Popen[bytes]]:
    """One uvicorn worker of `contender`, answering, until the block ends."""
    argv = [sys.executable, "-m", "uvicorn", *contender.app, "--port", str(contender.port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(
        argv, cwd=ROOT, env=contender.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{contender.port}/api/v1/notes/1").status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"{contender.label} did not answer on :{contender.port}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def compare(
    title: str,
    contenders: list[Contender],
    script: str,
    args: argparse.Namespace,
    prepare: Callable[[Contender], dict[str, str]] | None = None,
) -> dict[str, list[float]]:
    """Alternating rounds of `script` against each contender; the req/s of each, by round."""
    rates: dict[str, list[float]] = {contender.label: [] for contender in contenders}
    for round_number in range(args.rounds + 1):
        for contender in contenders:
            env = prepare(contender) if prepare else {}
            env["BENCH_ROWS"] = str(args.rows)
            seconds = 3 if round_number == 0 else args.seconds  # round 0 warms caches up
            rate, p99 = wrk(contender.port, seconds, script, env)
            if round_number:
                rates[contender.label].append(rate)
                line = f"{title} round {round_number} {contender.label:28s} {rate:8.0f} req/s"
                print(f"{line}  p99 {p99}", flush=True)
    return rates


def versions_file(database: str, first: int, last: int) -> str:
    """The current version of notes first..last, one `id version` per line, in a file."""

    async def read() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(database)
        try:
            return list(
                await connection.fetch(
                    "SELECT id, version FROM notes WHERE id BETWEEN $1 AND $2 ORDER BY id",
                    first,
                    last,
                )
            )
        finally:
            await connection.close()

    rows = asyncio.run(read())
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as file:
        file.write("".join(f"{row['id']} {row['version']}\n" for row in rows))
    return file.name


def worker_start_seconds(env: dict[str, str], samples: int = 3) -> list[float]:
    """Seconds from TTIN (the master forks at once) to the new worker's ready marker."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-start-"))
    layout = GunicornLayout(run_dir)
    env = {**env, "RUN_DIR": str(run_dir), "WEB_CONCURRENCY": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [
        str(Path(sys.executable).parent / "gunicorn"),
        "--config",
        str(ROOT / "gunicorn.conf.py"),
    ]
    master = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    seconds = []
    try:

        def ready() -> set[str]:
            return (
                {path.name for path in layout.ready_dir.glob("*")}
                if layout.ready_dir.exists()
                else set()
            )

        deadline = time.monotonic() + 60
        while not ready():
            if time.monotonic() > deadline:
                raise SystemExit("gunicorn did not start a worker")
            time.sleep(0.05)
        for _ in range(samples):
            before = ready()
            started = time.monotonic()
            master.send_signal(signal.SIGTTIN)
            while len(ready() - before) == 0:
                time.sleep(0.01)
            seconds.append(time.monotonic() - started)
    finally:
        master.terminate()
        master.wait(timeout=60)
    return seconds


def main() -> None:
    """Command line: reads, writes, memory and start, each figure and ratio printed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()

    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    name = f"notes_bench_{uuid.uuid4().hex[:8]}"
    base = server.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    plain = url.replace("+asyncpg", "")
    asyncio.run(_admin(f"{base}/postgres".replace("+asyncpg", ""), f'CREATE DATABASE "{name}"'))
    try:
        env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "INFO", "ENVIRONMENT": "test"}
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        asyncio.run(_seed(plain, args.rows))
        metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
        deployed = {**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        quiet = {**deployed, "ACCESS_LOG": "false", "REQUEST_METRICS": "false"}
        service_app = ["--factory", "service.main:create_app"]
        bare = Contender("bare Starlette + asyncpg", ["loadtest.bench.contenders:bare"], 18101, env)
        fastapi = Contender(
            "FastAPI + asyncpg", ["loadtest.bench.contenders:fastapi_raw"], 18102, env
        )
        service = Contender("service, as deployed", service_app, 18103, deployed)
        unobserved = Contender("service, no observability", service_app, 18104, quiet)
        with ExitStack() as stack:
            bouncer = stack.enter_context(pgbouncer.standalone(url, port=18199))
            pooled = Contender(
                "service, through PgBouncer",
                service_app,
                18105,
                {**deployed, "DATABASE_URL": bouncer, "DB_POOLER": "pgbouncer"},
            )
            # DB_POOLER=pgbouncer on a direct connection: what the statement cache saves.
            uncached = Contender(
                "service, no statement cache",
                service_app,
                18106,
                {**deployed, "DB_POOLER": "pgbouncer"},
            )
            readers = [bare, fastapi, service, unobserved, uncached, pooled]
            processes = {c.label: stack.enter_context(serving(c)) for c in readers}
            reads = compare("read", readers, READ, args)
            creates = compare("create", [bare, service], CREATE, args)
            half = args.rows // 2
            ranges = {bare.label: (1, half), service.label: (half + 1, args.rows)}
            updates = compare(
                "update",
                [bare, service],
                UPDATE,
                args,
                prepare=lambda c: {"BENCH_VERSIONS": versions_file(plain, *ranges[c.label])},
            )
            memory = psutil.Process(processes[service.label].pid).memory_info().rss / 2**20
        start = worker_start_seconds(env)
    finally:
        asyncio.run(
            _admin(
                f"{base}/postgres".replace("+asyncpg", ""),
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            )
        )

    def ratio(figures: dict[str, list[float]], over: Contender, of: Contender = service) -> str:
        # Round by round: both ran within seconds of each other, under the same noise.
        pairs = zip(figures[of.label], figures[over.label], strict=True)
        return f"{statistics.median(mine / theirs for mine, theirs in pairs):.2f}"

    def rate(figures: dict[str, list[float]], label: str) -> str:
        return f"{statistics.median(figures[label]):,.0f}"

    rows = [
        *((f"read req/s, {label}", rate(reads, label), "") for label in reads),
        ("read, service / bare", ratio(reads, bare), ">= 0.50"),
        ("read, service / FastAPI + asyncpg", ratio(reads, fastapi), ">= 0.64"),
        ("read, cost of observability", f"{1 - float(ratio(reads, unobserved)):.0%}", "<= 10%"),
        ("read, cost of PgBouncer", f"{1 - float(ratio(reads, service, pooled)):.0%}", ""),
        (
            "read, of which no statement cache",
            f"{1 - float(ratio(reads, service, uncached)):.0%}",
            "",
        ),
        *((f"create req/s, {label}", rate(creates, label), "") for label in creates),
        ("create, service / Starlette + asyncpg", ratio(creates, bare), ">= 0.50"),
        *((f"update req/s, {label}", rate(updates, label), "") for label in updates),
        ("update, service / Starlette + asyncpg", ratio(updates, bare), ">= 0.50"),
        ("service worker resident memory, MB", f"{memory:.0f}", "<= 80"),
        ("worker ready after fork, s (median)", f"{statistics.median(start):.2f}", "<= 1"),
    ]
    print("\n| figure | value | target |\n| --- | --- | --- |")
    for figure, value, target in rows:
        print(f"| {figure} | {value} | {target} |")


async def _admin(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _seed(dsn: str, rows: int) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO notes (text, completed) "
            "SELECT 'note number ' || n, n % 3 = 0 FROM generate_series(1, $1) AS n",
            rows,
        )
        await connection.execute("ANALYZE notes")
    finally:
        await connection.close()


if __name__ == "__main__":
    main()
