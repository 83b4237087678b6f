"""`make bench`: what the stack itself costs against `uvicorn --workers N` straight.

The stack as `make up` runs it (nginx → gunicorn with the stack's worker class and
gunicorn.conf.py → N workers, access logs and metrics as deployed, Prometheus scraping),
started by the native runner on free ports in a run directory of its own, against what a user
would run instead of it: `uvicorn --workers N --factory service.stack.asgi:create_stack` (the notes
service behind the stack's wrapper, in process), no proxy.
The same app, database, rows and N; wrk (one thread, 64 connections) reads random ids from
each in turn, in alternating rounds. Printed: each round, then the medians, the median of the
per-round ratios, and where the CPU of a request went in each (nginx, gunicorn's master, the
workers, PostgreSQL, wrk), from the kernel's counters of every process at both ends of a round.

    uv run python -m loadtest.bench.stack [--workers 2] [--rounds 5] [--seconds 8]
        [--warmup-seconds 3] [--connections 64] [--rows 10000] [--direct] [--check]
        [--stack-env NAME=VALUE ...] [--variant NAME=VALUE ...]

`--direct` adds a third contender: the stack's gunicorn on 127.0.0.1, with wrk at it past nginx,
which parts what the proxy hop costs from what gunicorn and the stack's worker class cost.
`--variant NAME=VALUE` adds the stack with one setting changed, side by side with the stack as
deployed (`--variant NGINX_SCHED_POLICY=other`: what nginx's scheduling policy is worth).
`--check` exits 1 when the stack keeps less than 0.90 of the bare server (a gate of its own:
speed is never asserted in `make test`). DATABASE_URL names a server; the benchmark makes and
drops its own database there.
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from deploy.native import monitoring
from deploy.native.layout import RunLayout
from deploy.native.processes import free_port, read_pid
from loadtest.bench.harness import (
    READ,
    ROOT,
    BenchDatabase,
    Round,
    bench_database,
    load_average,
    measure,
    median_of,
    median_ratio,
    schedule,
)

TARGET = 0.90
# Where a request's CPU goes, in the order the table prints it.
PARTS = ("nginx", "gunicorn master", "uvicorn supervisor", "workers", "monitoring", "PostgreSQL")


@dataclass
class Server:
    """One contender: where it listens, and its processes by part (asked afresh each time:
    a worker may be replaced between rounds)."""

    label: str
    port: int
    parts: Callable[[], dict[str, list[int]]]


def _tree(pid: int | None) -> list[int]:
    """`pid` and its children (nginx's master and workers, uvicorn's supervisor and workers)."""
    if pid is None:
        return []
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children())]
    except psutil.Error:
        return []


def _children(pid: int | None) -> list[int]:
    return _tree(pid)[1:]


def backends(database: BenchDatabase) -> list[int]:
    """PostgreSQL's backends serving the benchmark's database."""

    async def query() -> list[int]:
        connection = await asyncpg.connect(database.dsn)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", database.name
            )
            return [row["pid"] for row in rows]
        finally:
            await connection.close()

    return asyncio.run(query())


@contextmanager
def stack(
    database: BenchDatabase,
    workers: int,
    settings: dict[str, str] | None = None,
    label: str | None = None,
) -> Iterator[Server]:
    """The stack as `make up` runs it, by the native runner, on free ports in a fresh run dir
    (nginx's unprivileged workers must reach the socket in it: not a private temp dir)."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    run_dir.chmod(0o755)
    http_port = free_port()
    env = {
        **os.environ,
        "RUN_DIR": str(run_dir),
        "DATABASE_URL": database.url,
        "WEB_CONCURRENCY": str(workers),
        "HTTP_PORT": str(http_port),
        "OPS_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
        "NGINX_EXPORTER_PORT": str(free_port()),
        **(settings or {}),
    }
    layout = RunLayout(run_dir)

    def runner(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deploy.native", command],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip

    def parts() -> dict[str, list[int]]:
        master = read_pid(layout.gunicorn_pidfile)
        return {
            "nginx": _tree(read_pid(layout.nginx_pidfile)),
            "gunicorn master": [master] if master else [],
            "workers": _children(master),
            "monitoring": [
                pid for name in monitoring.DAEMONS if (pid := read_pid(layout.pidfile(name)))
            ],
            "PostgreSQL": backends(database),
        }

    try:
        started = runner("up")
        if started.returncode != 0:
            raise SystemExit(f"the stack did not start:\n{started.stdout}{started.stderr}")
        label = label or f"stack, {workers} worker{'s' * (workers > 1)}"
        yield Server(label, http_port, parts)
    finally:
        runner("down")
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def direct(database: BenchDatabase, workers: int) -> Iterator[Server]:
    """The stack's gunicorn on a TCP port of 127.0.0.1 (nginx's upstream too), with wrk at
    it past nginx: the stack's process manager and worker class without the proxy hop."""
    port = free_port()
    bind = f"127.0.0.1:{port}"
    with stack(database, workers, {"GUNICORN_BIND": bind, "APP_UPSTREAM": bind}) as deployed:

        def parts() -> dict[str, list[int]]:
            return {part: pids for part, pids in deployed.parts().items() if part != "nginx"}

        yield Server(f"gunicorn straight, {workers} worker{'s' * (workers > 1)}", port, parts)


@contextmanager
def bare(database: BenchDatabase, workers: int) -> Iterator[Server]:
    """`uvicorn --workers N` on the same app, straight: what a user would run instead. The
    app's settings are the deployed ones (access line, multiprocess metrics) and its output
    goes to a file, as gunicorn's does."""
    directory = Path(tempfile.mkdtemp(prefix="bench-bare-"))
    (directory / "metrics").mkdir()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database.url,
        "PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"),
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "service.stack.asgi:create_stack",
            "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = directory / "app.log"
    with log.open("ab") as output:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        # Every worker says so once its lifespan has started (uvicorn's own line).
        while log.read_text().count("Application startup complete") < workers:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"uvicorn --workers {workers} did not start; see {log}")
            time.sleep(0.2)

        def parts() -> dict[str, list[int]]:
            if workers == 1:  # uvicorn serves in its own process, without a supervisor
                return {"workers": [process.pid], "PostgreSQL": backends(database)}
            return {
                "uvicorn supervisor": [process.pid],
                "workers": _children(process.pid),
                "PostgreSQL": backends(database),
            }

        yield Server(f"uvicorn --workers {workers}", port, parts)
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


def compare(servers: list[Server], args: argparse.Namespace) -> dict[str, list[Round]]:
    """Alternating rounds of reads against every server; each server's counted rounds."""
    figures: dict[str, list[Round]] = {server.label: [] for server in servers}
    env = {"BENCH_ROWS": str(args.rows)}
    for number, server in schedule(servers, args.rounds):
        if not number and not args.warmup_seconds:
            continue
        seconds = args.seconds if number else args.warmup_seconds
        one = measure(
            server.port,
            server.parts,
            script=READ,
            env=env,
            seconds=seconds,
            connections=args.connections,
        )
        if not number:
            continue
        figures[server.label].append(one)
        parts = ", ".join(
            f"{part} {ms:.3f}" for part in (*PARTS, "wrk") if (ms := one.cpu_ms(part))
        )
        print(
            f"round {number} {server.label:30s} {one.rate:8.0f} req/s  "
            f"p99 {one.p99_ms:6.1f} ms  CPU ms/request: {parts}; "
            f"machine {one.busy_cores():.2f} cores busy",
            flush=True,
        )
    return figures


def table(figures: dict[str, list[Round]], bare: str) -> list[tuple[str, ...]]:
    """The rows `make bench` prints, a column per contender (`bare` last): rates, each one's
    ratio to the bare server by rate and by CPU, p99, and a request's CPU by part."""
    labels = [label for label in figures if label != bare] + [bare]

    def row(name: str, value: Callable[[Round], float | None], digits: int = 3) -> tuple[str, ...]:
        def shown(rounds: list[Round]) -> str:
            median = median_of(rounds, value)
            return "" if median is None else f"{median:,.{digits}f}"

        return (name, *(shown(figures[label]) for label in labels))

    def ratios(name: str, of: Callable[[list[Round]], float], note: str) -> tuple[str, ...]:
        return (name, *(f"{of(figures[label]):.2f}" for label in labels[:-1]), note)

    def cpu(part: str) -> Callable[[Round], float | None]:
        return lambda one: one.cpu_ms(part)

    bare_rounds = figures[bare]
    return [
        ("figure", *labels),
        row("read req/s (median)", lambda one: one.rate, 0),
        ratios(
            "read, / bare (median of round ratios)",
            lambda rounds: median_ratio([o.rate for o in rounds], [o.rate for o in bare_rounds]),
            f"target for the stack >= {TARGET}",
        ),
        ratios(
            "read, / bare by CPU per request",
            lambda rounds: median_ratio(
                [o.total_cpu_ms() for o in bare_rounds], [o.total_cpu_ms() for o in rounds]
            ),
            "bare's / its own",
        ),
        row("p99 ms (median)", lambda one: one.p99_ms, 1),
        *(row(f"CPU ms/request: {part}", cpu(part)) for part in (*PARTS, "wrk")),
        # nginx sleeps in epoll_wait between events: each wake-up costs it a context switch.
        row("nginx's sleeps per request", lambda one: one.sleeps_per_request("nginx"), 2),
        row("CPU ms/request: all of the above", Round.total_cpu_ms),
        row("machine busy, cores (neighbours included)", Round.busy_cores, 2),
    ]


def markdown(rows: list[tuple[str, ...]]) -> str:
    """`rows` (the first one the header) as a Markdown table."""
    lines = [rows[0], ("---",) * len(rows[0]), *rows[1:]]
    return "\n".join(f"| {' | '.join(line)} |" for line in lines)


def assignment(text: str) -> tuple[str, str]:
    """`NAME=VALUE`, as --stack-env and --variant take it."""
    name, equals, value = text.partition("=")
    if not name or not equals:
        msg = f"{text!r} is not NAME=VALUE"
        raise argparse.ArgumentTypeError(msg)
    return name, value


def main() -> None:
    """Command line: the two contenders, alternating rounds, the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--warmup-seconds", type=int, default=3, help="0: no warm-up round")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument(
        "--direct", action="store_true", help="also gunicorn straight, past nginx (see above)"
    )
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET}")
    parser.add_argument(
        "--stack-env",
        type=assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the stack alone, to try a variant (repeat for more)",
    )
    parser.add_argument(
        "--variant",
        type=assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also the stack with this setting, as a contender of its own (repeatable)",
    )
    args = parser.parse_args()
    settings = dict(args.stack_env)

    print(f"load average before: {load_average()}", flush=True)
    with bench_database(args.rows) as database, ExitStack() as servers:
        contenders = [servers.enter_context(stack(database, args.workers, settings))]
        for name, value in args.variant:
            changed, label = {**settings, name: value}, f"stack, {name}={value}"
            contenders.append(servers.enter_context(stack(database, args.workers, changed, label)))
        if args.direct:
            contenders.append(servers.enter_context(direct(database, args.workers)))
        contenders.append(servers.enter_context(bare(database, args.workers)))
        figures = compare(contenders, args)
    deployed, straight = contenders[0].label, contenders[-1].label
    print(f"load average after: {load_average()}\n")
    print(markdown(table(figures, straight)))
    ratio = median_ratio(*([one.rate for one in figures[label]] for label in (deployed, straight)))
    if args.check and ratio < TARGET:
        sys.exit(f"the stack keeps {ratio:.2f} of the bare server, below {TARGET}")


if __name__ == "__main__":
    main()
