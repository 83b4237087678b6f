"""The last line of every request: one deadline for all of it, and an answer for any failure.

A request may wait for a pooled connection and then for its statement; each has a timeout of
its own, and one after the other they could keep a client far longer than either promises.
The deadline bounds the whole request instead: past `REQUEST_TIMEOUT` it is cancelled (which
cancels the statement on the server too) and answered 503 with `Retry-After`.

A failure that escapes the app must not break the connection it came on. Starlette's own
last-resort handler answers 500 and then re-raises, so uvicorn closes the keep-alive
connection that nginx keeps for the next request, and that request, a POST it may not retry,
gets 502. Here an exception is answered and ends with the request; only a response already
cut short leaves uvicorn to close the connection, because nothing else can end it cleanly.
"""

import asyncio

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class RequestGuardMiddleware:
    """Bounds every HTTP request by `timeout` seconds and answers any exception it escapes."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = completed = False

        async def send_tracked(message: Message) -> None:
            nonlocal started, completed
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
            await send(message)

        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                logger.warning(
                    "request_deadline_exceeded", timeout_s=self.timeout, answered=started
                )
                if started:
                    raise  # part of a response is out: only closing the connection ends it
                await send_json(
                    send,
                    503,
                    {"detail": f"Request took longer than {self.timeout:g}s"},
                    {"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
                return
            logger.exception("unhandled_error", answered=started)
            if started and not completed:
                raise
            if not started:
                await send_json(send, 500, {"detail": "Internal Server Error"})
