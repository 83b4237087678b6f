"""Benchmark: GET /api/v1/notes/{id} against a bare Starlette + asyncpg handler, side by side.

Both run as one uvicorn worker (uvloop, httptools, no access log) on the same database and
rows; wrk fetches random ids with 32 connections. Rounds alternate between the two so that
machine noise hits both alike. Prints req/s, latency and the ratio service / bare.

    uv run python -m loadtest.bench.read_path [--seconds 10] [--rounds 3] [--rows 10000]

DATABASE_URL names a server; the benchmark makes and drops its own database there.
"""

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
WRK_SCRIPT = """
math.randomseed(os.time())
local rows = tonumber(os.getenv("BENCH_ROWS"))
request = function()
  return wrk.format("GET", "/api/v1/notes/" .. math.random(1, rows))
end
"""


async def admin(server: str, statement: str) -> None:
    connection = await asyncpg.connect(server.replace("+asyncpg", ""))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def seed(url: str, rows: int) -> None:
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await connection.execute(
            "INSERT INTO notes (text, completed) "
            "SELECT 'note number ' || n, n % 3 = 0 FROM generate_series(1, $1) AS n",
            rows,
        )
        await connection.execute("ANALYZE notes")
    finally:
        await connection.close()


def start(app: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            *app,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/notes/1", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{app} did not answer on port {port}")


def wrk(port: int, seconds: int, script: str, rows: int) -> tuple[float, str]:
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            "-c32",
            f"-d{seconds}s",
            "--latency",
            "-s",
            script,
            f"http://127.0.0.1:{port}",
        ],
        env={**os.environ, "BENCH_ROWS": str(rows)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in output:
        raise SystemExit(f"wrk saw errors:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", output).group(1)  # type: ignore[union-attr]
    return rate, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()

    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    name = f"notes_bench_{uuid.uuid4().hex[:8]}"
    base = server.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    asyncio.run(admin(f"{base}/postgres", f'CREATE DATABASE "{name}"'))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # The service as deployed: every request writes its access line (to /dev/null) and
        # its metrics to multiprocess files.
        metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "LOG_LEVEL": "INFO",
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        }
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        asyncio.run(seed(url, args.rows))
        targets = {
            "bare": (["loadtest.bench.bare_app:app"], 18101),
            "service": (["--factory", "service.main:create_app"], 18102),
        }
        for app, port in targets.values():
            processes.append(start(app, port, env))
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(WRK_SCRIPT)
            script.flush()
            for _, port in targets.values():
                wrk(port, 3, script.name, args.rows)  # warm: caches, prepared statements, JIT
            rates: dict[str, list[float]] = {label: [] for label in targets}
            for round_number in range(1, args.rounds + 1):
                for label, (_, port) in targets.items():
                    rate, p99 = wrk(port, args.seconds, script.name, args.rows)
                    rates[label].append(rate)
                    print(f"round {round_number} {label:8s} {rate:8.0f} req/s  p99 {p99}")
        bare, service = (statistics.median(rates[label]) for label in ("bare", "service"))
        print(f"median   bare     {bare:8.0f} req/s")
        print(f"median   service  {service:8.0f} req/s")
        print(f"ratio    service/bare = {service / bare:.2f}")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        asyncio.run(admin(f"{base}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
