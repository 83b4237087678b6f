"""The one middleware every request crosses: its deadline, its last-resort answer, its
Server-Timing header, and what is recorded of it.

One layer, not three: each ASGI layer wraps `send` once more and costs every request a few
percent (py-spy under wrk, docs/performance.md).

**One deadline.** A request may wait for a pooled connection and then for its statement; each
has a timeout of its own, and one after the other they could keep a client far longer than
either promises. The deadline bounds the whole request instead: past `REQUEST_TIMEOUT` it is
cancelled (which cancels the statement on the server too) and answered 503 with
`Retry-After`.

**A failure breaks nothing else.** Starlette's own last-resort handler answers 500 and then
re-raises, so uvicorn closes the keep-alive connection that nginx keeps for the next request,
and that request, a POST it may not retry, gets 502. Here an exception is answered and ends
with the request; only a response already cut short leaves uvicorn to close the connection,
because nothing else can end it cleanly.
"""

import time

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deadlines import Deadlines
from service.observability.requests import RequestObserver
from service.observability.timing import collect_timings, server_timing_header, stop_collecting

logger = structlog.get_logger(__name__)

# Seconds a client should wait before retrying a request the service could not serve now.
RETRY_AFTER_SECONDS = 1


async def send_json(
    send: Send, status: int, body: object, headers: dict[str, str] | None = None
) -> None:
    """Send a whole JSON response as raw ASGI messages."""
    content = orjson.dumps(body)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})


class RequestMiddleware:
    """Bounds every HTTP request by `timeout` seconds, answers any exception that escapes the
    app, adds `Server-Timing: ..., app;dur=<ms>`, and has `observer` record the request."""

    def __init__(self, app: ASGIApp, *, timeout: float, observer: RequestObserver) -> None:
        self.app = app
        self.timeout = timeout
        self.observer = observer
        self.deadlines = Deadlines()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        observation = self.observer.start(scope)
        timings, token = collect_timings()
        status = 500
        started = completed = False

        async def send_observed(message: Message) -> None:
            nonlocal status, started, completed
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                app_seconds = time.perf_counter() - observation.started
                timing = (b"server-timing", server_timing_header(timings, app_seconds))
                message["headers"] = [*message.get("headers", ()), timing]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
            await send(message)

        deadline = self.deadlines.after(self.timeout)
        try:
            with deadline:
                await self.app(scope, receive, send_observed)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired:
                logger.warning(
                    "request_deadline_exceeded", timeout_s=self.timeout, answered=started
                )
                if started:
                    raise  # part of a response is out: only closing the connection ends it
                await send_json(
                    send_observed,
                    503,
                    {"detail": f"Request took longer than {self.timeout:g}s"},
                    {"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
                return
            logger.exception("unhandled_error", answered=started)
            if started and not completed:
                raise
            if not started:
                await send_json(send_observed, 500, {"detail": "Internal Server Error"})
        finally:
            stop_collecting(token)
            self.observer.finish(observation, status)
