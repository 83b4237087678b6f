"""`make bench`: the service against the same endpoints written by hand, side by side.

Every contender runs as one uvicorn worker (uvloop, httptools) on one database with the same
rows; wrk (one thread, 32 connections) loads each in turn, and the rounds alternate so that
the machine's noise hits all of them alike. Printed, with every ratio:

    reads    GET /api/v1/notes/{id}, random ids: bare Starlette + asyncpg, FastAPI + asyncpg,
             the service as deployed (access line at INFO, multiprocess metrics), and the
             service through PgBouncer (transaction mode, DB_POOLER=pgbouncer) and straight
             to PostgreSQL with the statement cache off as behind it: what the pooler costs,
             and why
    writes   POST, and PATCH with a current If-Match: Starlette + asyncpg against the service
    memory   the service worker's resident memory after all of that
    observability  the service's reads as deployed against ACCESS_LOG=false
             REQUEST_METRICS=false, in more and shorter rounds of their own: a few percent
             between two contenders needs more pairs than the rest
    start    seconds from a gunicorn worker's fork to its ready marker

Each round also prints the CPU the contender's worker spent per request.

    uv run python -m loadtest.bench.endpoints [--seconds 8] [--rounds 5] [--rows 10000]
        [--observability-rounds 15] [--observability-seconds 4] [--only observability]

DATABASE_URL names a server; the benchmark makes and drops its own database there.
"""

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import asyncpg
import httpx
import psutil

from deploy.native import pgbouncer
from loadtest.bench.harness import (
    READ,
    ROOT,
    Round,
    bench_database,
    load_average,
    measure,
    median_ratio,
    schedule,
)
from service.runtime.layout import GunicornLayout

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
    *,
    processes: dict[str, "subprocess.Popen[bytes]"],
    prepare: Callable[[Contender], dict[str, str]] | None = None,
) -> dict[str, list[Round]]:
    """Alternating rounds of `script` against each contender (whose worker is in
    `processes`); each contender's counted rounds."""
    rounds: dict[str, list[Round]] = {contender.label: [] for contender in contenders}
    for number, contender in schedule(contenders, args.rounds):
        env = prepare(contender) if prepare else {}
        env["BENCH_ROWS"] = str(args.rows)
        one = measure(
            contender.port,
            partial(dict, worker=[processes[contender.label].pid]),
            script=script,
            env=env,
            seconds=args.seconds if number else 3,  # round 0 warms caches up
        )
        if number:
            rounds[contender.label].append(one)
            print(
                f"{title} round {number} {contender.label:28s} {one.rate:8.0f} req/s  "
                f"p99 {one.p99_ms:6.1f} ms  worker CPU {one.cpu_ms('worker'):.3f} ms/request",
                flush=True,
            )
    return rounds


def versions_file(database: str, first: int, last: int) -> str:
    """The current version of notes first..last, one `id version` per line, in a file, once
    they have settled: PATCHes that the contender's previous run sent may still commit after
    wrk has stopped (the rounds alternate, so a contender may run twice in a row)."""

    async def read() -> list[tuple[int, int]]:
        connection = await asyncpg.connect(database)
        try:
            rows = await connection.fetch(
                "SELECT id, version FROM notes WHERE id BETWEEN $1 AND $2 ORDER BY id",
                first,
                last,
            )
            return [(row["id"], row["version"]) for row in rows]
        finally:
            await connection.close()

    versions, deadline = asyncio.run(read()), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        settled, versions = versions, asyncio.run(read())
        if settled == versions:
            break
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as file:
        file.write("".join(f"{note} {version}\n" for note, version in versions))
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
        shutil.rmtree(run_dir, ignore_errors=True)
    return seconds


def main() -> None:
    """Command line: reads, writes, memory and start, each figure and ratio printed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument(
        "--only",
        choices=["observability"],
        help="observability: only the service's reads with and without it",
    )
    # A few percent between two contenders: more and shorter rounds than the rest.
    parser.add_argument("--observability-rounds", type=int, default=15)
    parser.add_argument("--observability-seconds", type=int, default=4)
    args = parser.parse_args()

    print(f"load average before: {load_average()}", flush=True)
    with bench_database(args.rows) as database:
        env = {**os.environ, "DATABASE_URL": database.url, "LOG_LEVEL": "INFO"}
        env["ENVIRONMENT"] = "test"
        rows = [] if args.only else everything(env, database.dsn, args)
        rows += observability(env, args)
        if not args.only:
            start = statistics.median(worker_start_seconds(env))
            rows.append(("worker ready after fork, s (median)", f"{start:.2f}", "<= 1"))
    print(f"load average after: {load_average()}")
    print("\n| figure | value | target |\n| --- | --- | --- |")
    for figure, value, target in rows:
        print(f"| {figure} | {value} | {target} |")


def service_contenders(env: dict[str, str], metrics: str) -> tuple[Contender, Contender]:
    """The service as deployed (access line at INFO, multiprocess metrics in the directory
    `metrics`, the caller's to remove), and without its access line and request metrics."""
    deployed = {**env, "PROMETHEUS_MULTIPROC_DIR": metrics}
    quiet = {**deployed, "ACCESS_LOG": "false", "REQUEST_METRICS": "false"}
    service_app = ["--factory", "service.stack.asgi:create_stack"]
    return (
        Contender("service, as deployed", service_app, 18103, deployed),
        Contender("service, no observability", service_app, 18104, quiet),
    )


def _ratio(figures: dict[str, list[Round]], of: Contender, over: Contender) -> float:
    """The median of the round-by-round ratios of `of`'s rate to `over`'s."""
    return median_ratio(*([one.rate for one in figures[c.label]] for c in (of, over)))


def _rate(figures: dict[str, list[Round]], label: str) -> str:
    return f"{statistics.median(one.rate for one in figures[label]):,.0f}"


def observability(env: dict[str, str], args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """What the access line and the request metrics cost one worker's reads: in rate, and in
    the worker's CPU per request."""
    rounds = argparse.Namespace(
        **{**vars(args), "rounds": args.observability_rounds, "seconds": args.observability_seconds}
    )
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as metrics:
        service, unobserved = service_contenders(env, metrics)
        with serving(service) as observed_worker, serving(unobserved) as quiet_worker:
            processes = {service.label: observed_worker, unobserved.label: quiet_worker}
            reads = compare(
                "observability", [service, unobserved], READ, rounds, processes=processes
            )
    cpu = median_ratio(
        *([one.cpu_ms("worker") or 0.0 for one in reads[c.label]] for c in (service, unobserved))
    )
    return [
        *(
            (f"observability rounds: read req/s, {label}", _rate(reads, label), "")
            for label in reads
        ),
        ("read, cost of observability", f"{1 - _ratio(reads, service, unobserved):.0%}", "<= 10%"),
        ("read, cost of observability in the worker's CPU per request", f"{cpu - 1:.0%}", ""),
    ]


def everything(
    env: dict[str, str], dsn: str, args: argparse.Namespace
) -> list[tuple[str, str, str]]:
    """Every contender: reads, writes, PgBouncer and memory, as the rows of the table."""
    bare = Contender("bare Starlette + asyncpg", ["loadtest.bench.contenders:bare"], 18101, env)
    fastapi = Contender("FastAPI + asyncpg", ["loadtest.bench.contenders:fastapi_raw"], 18102, env)
    with ExitStack() as stack:
        metrics = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-metrics-"))
        service, _ = service_contenders(env, metrics)
        bouncer = stack.enter_context(pgbouncer.standalone(env["DATABASE_URL"], port=18199))
        pooled = Contender(
            "service, through PgBouncer",
            service.app,
            18105,
            {**service.env, "DATABASE_URL": bouncer, "DB_POOLER": "pgbouncer"},
        )
        # DB_POOLER=pgbouncer on a direct connection: what the statement cache saves.
        uncached = Contender(
            "service, no statement cache",
            service.app,
            18106,
            {**service.env, "DB_POOLER": "pgbouncer"},
        )
        readers = [bare, fastapi, service, uncached, pooled]
        processes = {c.label: stack.enter_context(serving(c)) for c in readers}
        reads = compare("read", readers, READ, args, processes=processes)
        creates = compare("create", [bare, service], CREATE, args, processes=processes)
        half = args.rows // 2
        ranges = {bare.label: (1, half), service.label: (half + 1, args.rows)}

        def versions(contender: Contender) -> dict[str, str]:
            path = versions_file(dsn, *ranges[contender.label])
            stack.callback(os.unlink, path)
            return {"BENCH_VERSIONS": path}

        updates = compare(
            "update", [bare, service], UPDATE, args, processes=processes, prepare=versions
        )
        memory = psutil.Process(processes[service.label].pid).memory_info().rss / 2**20

    def cost(of: Contender) -> str:
        return f"{1 - _ratio(reads, of, service):.0%}"

    return [
        *((f"read req/s, {label}", _rate(reads, label), "") for label in reads),
        ("read, service / bare", f"{_ratio(reads, service, bare):.2f}", ">= 0.60"),
        ("read, service / FastAPI + asyncpg", f"{_ratio(reads, service, fastapi):.2f}", ">= 0.64"),
        ("read, cost of PgBouncer", cost(pooled), ""),
        ("read, of which no statement cache", cost(uncached), ""),
        *((f"create req/s, {label}", _rate(creates, label), "") for label in creates),
        (
            "create, service / Starlette + asyncpg",
            f"{_ratio(creates, service, bare):.2f}",
            ">= 0.50",
        ),
        *((f"update req/s, {label}", _rate(updates, label), "") for label in updates),
        (
            "update, service / Starlette + asyncpg",
            f"{_ratio(updates, service, bare):.2f}",
            ">= 0.50",
        ),
        ("service worker resident memory, MB", f"{memory:.0f}", "<= 80"),
    ]


if __name__ == "__main__":
    main()
