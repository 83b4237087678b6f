"""Benchmark: the instructions a worker executes per request, counted by callgrind.

Each contender's ASGI app is called in its own process, with its lifespan running, against a
database of the benchmark's own: 300 requests to warm up, then `--requests` more with
callgrind's instrumentation switched on (`callgrind_control -i on`) for them alone. What it
counts is the worker's own work (routing, validation, the pool, the driver, observability),
not the HTTP server's or the kernel's, so its ratios are wider than wrk's; but it is the same
count on a busy machine as on a quiet one, which wrk's rate is not. How issue 18's routes were
made fast was measured with it (docs/performance.md).

    uv run python -m loadtest.bench.instructions [--requests 200] [--kind read|create]
"""

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from loadtest.bench.harness import ROOT, bench_database, load_average

CONTENDERS = {
    "bare Starlette + asyncpg": "loadtest.bench.contenders:bare",
    "FastAPI + asyncpg": "loadtest.bench.contenders:fastapi_raw",
    "service, as deployed": "service.stack.asgi:create_stack()",
}
ROWS = 10_000
WARM_UP = 300
CREATE_BODY = b'{"text": "a note written by the benchmark"}'
_COLLECTED = re.compile(r"Collected : (\d+)")

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def main() -> None:
    """Command line: each contender counted in turn, then the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--kind", choices=("read", "create"), default="read")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the child under callgrind
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.requests, args.kind))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions: needs valgrind (apt-get install valgrind)")
    print(f"load average {load_average()}", flush=True)
    counts: dict[str, int] = {}
    with bench_database(ROWS) as database:
        for label, app in CONTENDERS.items():
            counts[label] = _count(app, database.url, args.requests, args.kind)
            print(f"{args.kind} {label:28s} {counts[label]:>10,} instructions", flush=True)
    floor = counts["bare Starlette + asyncpg"]
    print(f"\n| {args.kind}, in the worker's process | instructions per request | bare / it |")
    print("| --- | ---: | ---: |")
    for label, count in counts.items():
        print(f"| {label} | {count:,} | {floor / count:.2f} |")


def _count(app: str, database_url: str, requests: int, kind: str) -> int:
    """Instructions per request of `app`, from callgrind's count of the measured loop."""
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as directory:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "ENVIRONMENT": "test",
            "PROMETHEUS_MULTIPROC_DIR": directory,
        }
        argv = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={directory}/callgrind.out",
            sys.executable, "-m", "loadtest.bench.instructions",
            "--serve", app, "--requests", str(requests), "--kind", kind,
        ]  # fmt: skip
        result = subprocess.run(
            argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, check=False, timeout=1800,
        )  # fmt: skip
    collected = _COLLECTED.search(result.stderr)
    if result.returncode != 0 or collected is None:
        raise SystemExit(f"instructions: {app} failed under callgrind:\n{result.stderr[-2000:]}")
    return int(collected.group(1)) // requests


async def _serve(spec: str, requests: int, kind: str) -> None:
    """In the child: the app's lifespan, the warm-up, then the counted requests."""
    from asgi_lifespan import LifespanManager  # noqa: PLC0415 (a dev dependency)
    from gunicorn.util import import_app  # noqa: PLC0415 (gunicorn's own APP syntax)

    app = import_app(spec)
    async with LifespanManager(app) as manager:
        state = dict(manager._state)  # the lifespan state, as a server passes it on

        async def one() -> int:
            return await _request(manager.app, state, kind)

        for _ in range(WARM_UP):
            status = await one()
            if status not in (200, 201):
                raise SystemExit(f"instructions: {spec} answered {status}")
        _instrument("on")
        for _ in range(requests):
            await one()
        _instrument("off")


def _instrument(switch: str) -> None:
    subprocess.run(
        ["callgrind_control", "-i", switch, str(os.getpid())], check=True, capture_output=True
    )


async def _request(app: Asgi, state: dict[str, Any], kind: str) -> int:
    """One request as nginx forwards it (with X-Request-ID); its status."""
    read = kind == "read"
    path = f"/api/v1/notes/{random.randint(1, ROWS)}" if read else "/api/v1/notes"  # noqa: S311
    headers = [(b"host", b"127.0.0.1"), (b"x-request-id", b"0123456789abcdef")]
    if not read:
        headers.append((b"content-type", b"application/json"))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": "GET" if read else "POST", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": dict(state),
    }  # fmt: skip
    body = {"type": "http.request", "body": b"" if read else CREATE_BODY, "more_body": False}
    status = 0

    async def receive() -> dict[str, Any]:
        return body

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


if __name__ == "__main__":
    main()
