"""Server-Timing: a pure ASGI middleware and a way for handlers to add their own entries."""

import time
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_timings: ContextVar[list[str] | None] = ContextVar("server_timings", default=None)


def record_timing(name: str, duration_seconds: float) -> None:
    """Add `name;dur=<ms>` to the current response's Server-Timing header."""
    timings = _timings.get()
    if timings is not None:
        timings.append(f"{name};dur={duration_seconds * 1000:.2f}")


class ServerTimingMiddleware:
    """Adds `Server-Timing: ..., app;dur=<ms>` to every HTTP response.

    `app` runs from the moment the request reaches the app to the moment its headers are sent.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        timings: list[str] = []
        token = _timings.set(timings)

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = (time.perf_counter() - started) * 1000
                value = ", ".join([*timings, f"app;dur={elapsed_ms:.2f}"]).encode("latin-1")
                message["headers"] = [*message.get("headers", ()), (b"server-timing", value)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_timing)
        finally:
            _timings.reset(token)
