"""Benchmark: the cost of one JSON log line, structlog's own path against the standard library's.

Both render through the same processor chain (service/observability/logging.py) into /dev/null:
structlog's events go straight to an orjson renderer and a bytes writer; standard library
records (uvicorn, gunicorn) go through logging's handler and ProcessorFormatter.

    uv run python -m loadtest.bench.log_line [--lines 200000]
"""

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

import structlog

from service.observability.logging import configure_logging


def per_line_us(emit: Callable[[int], None], lines: int) -> float:
    emit(1000)  # warm: caches, the logger proxy's first-use binding
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        emit(lines)
        best = min(best, time.perf_counter() - started)
    return best / lines * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    args = parser.parse_args()

    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives for the whole run)
    configure_logging("INFO", "json")
    structlog.contextvars.bind_contextvars(request_id="0123456789abcdef0123456789abcdef")
    native = structlog.get_logger("service.access")
    stdlib = logging.getLogger("uvicorn.error")

    def emit_native(count: int) -> None:
        for _ in range(count):
            native.info(
                "request", method="GET", path="/api/v1/notes/42", route="/api/v1/notes/{note_id}",
                status=200, duration_ms=1.234, client_ip="127.0.0.1",
            )  # fmt: skip

    def emit_stdlib(count: int) -> None:
        for _ in range(count):
            stdlib.info("request %s %s %s", "GET", "/api/v1/notes/42", 200)

    native_us = per_line_us(emit_native, args.lines)
    stdlib_us = per_line_us(emit_stdlib, args.lines)
    sys.stdout = real_stdout
    print(f"structlog native + orjson     {native_us:6.2f} us/line")
    print(f"stdlib + ProcessorFormatter   {stdlib_us:6.2f} us/line")
    print(f"ratio stdlib/native           {stdlib_us / native_us:6.2f}")


if __name__ == "__main__":
    main()
