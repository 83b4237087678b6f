"""Benchmark: what observing one request costs a worker, measured in the process itself.

The request middleware (service/http/middleware.py) around an app that only routes and
answers, as deployed (access line at INFO into a file, multiprocess metrics) and with
ACCESS_LOG=false REQUEST_METRICS=false, alternating; then each half of it alone. CPU time, not
wall time, and the best of several runs: a few microseconds a request that a wrk run, whose
rate drifts by more than that from one round to the next, cannot resolve alone.

    uv run python -m loadtest.bench.observer [--requests 50000]
"""

import argparse
import asyncio
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Before prometheus_client is imported: metrics as a gunicorn worker writes them, into a
# directory of this run's, removed at exit.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-observer-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.http.middleware import RequestMiddleware
from service.observability.logging import configure_logging
from service.observability.requests import RequestObserver

ROUTE = Route("/api/v1/notes/{note_id}", lambda request: None)
BODY = b'{"id":42,"text":"note number 42","completed":false}'
HEADERS = [
    (b"host", b"127.0.0.1"),
    (b"x-forwarded-for", b"127.0.0.1"),
    (b"x-forwarded-proto", b"http"),
    (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
]


async def routed_app(scope: Scope, receive: Receive, send: Send) -> None:
    """What the app does that the middleware sees: route, then answer."""
    scope["route"] = ROUTE
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": BODY})


async def per_request_us(middleware: RequestMiddleware, requests: int) -> float:
    """CPU microseconds per request through `middleware`, the best of three runs."""

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: object) -> None:
        pass

    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(requests):
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/api/v1/notes/42",
                "root_path": "",
                "client": ("127.0.0.1", 50000),
                "headers": HEADERS,
            }
            await middleware(scope, receive, send)
        best = min(best, time.process_time() - started)
    return best / requests * 1e6


async def measure(requests: int) -> dict[str, float]:
    """Each configuration's cost per request, the configurations alternating."""
    configurations = {
        "as deployed": RequestObserver(request_metrics=True, access_log=True),
        "access line only": RequestObserver(request_metrics=False, access_log=True),
        "request metrics only": RequestObserver(request_metrics=True, access_log=False),
        "neither": RequestObserver(request_metrics=False, access_log=False),
    }
    costs: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(3):
        for name, observer in configurations.items():
            middleware = RequestMiddleware(routed_app, timeout=30, observer=observer)
            costs[name].append(await per_request_us(middleware, requests))
    return {name: min(values) for name, values in costs.items()}


def main() -> None:
    """Command line: the table of microseconds per request."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    real_stdout = os.dup(sys.stdout.fileno())
    with tempfile.TemporaryDirectory() as directory:
        # The access lines go where a worker's stdout goes: a file.
        log = os.open(Path(directory) / "app.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, sys.stdout.fileno())
        configure_logging("INFO", "json")
        try:
            costs = asyncio.run(measure(args.requests))
        finally:
            os.dup2(real_stdout, sys.stdout.fileno())
    neither = costs["neither"]
    print("\n| the request middleware, CPU per request | µs | of which observability |")
    print("| --- | --- | --- |")
    for name, cost in costs.items():
        print(f"| {name} | {cost:.1f} | {cost - neither:.1f} |")


if __name__ == "__main__":
    main()
