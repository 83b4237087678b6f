"""The app's own ASGI lifespan, driven by the stack from inside its own.

The server sends the stack `lifespan.startup`; the stack starts what it owns (metrics,
sampling), then runs the app's lifespan to its `startup.complete` and only then answers the
server. At shutdown the app's lifespan ends first, then the stack's. The app gets the
server's lifespan scope, `state` included, so what its lifespan yields reaches its requests
as it would without the stack.
"""

import asyncio

import structlog
from starlette.types import ASGIApp, Message, Scope

logger = structlog.get_logger(__name__)


class LifespanFailedError(RuntimeError):
    """The app's lifespan reported that its startup or shutdown failed."""


class AppLifespan:
    """One run of an app's lifespan: `startup()`, then later `shutdown()`.

    An app that does not speak the lifespan protocol (it raises, or returns, before it has
    answered the startup) runs without one, as uvicorn's `--lifespan auto` runs it.
    """

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self.app = app
        self.scope = scope
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.supported = True

    async def startup(self) -> None:
        """Run the app's startup to its end; raise `LifespanFailedError` if it failed."""
        self._task = asyncio.create_task(self._run())
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._from_app.get()
        if message is None:
            self.supported = False
            logger.info("app_lifespan_unsupported")
            return
        if message["type"] == "lifespan.startup.failed":
            await self._finish()
            raise LifespanFailedError(message.get("message") or "the app's startup failed")

    async def shutdown(self) -> None:
        """Run the app's shutdown to its end; raise `LifespanFailedError` if it failed."""
        if not self.supported or self._task is None:
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        message = await self._from_app.get()
        await self._finish()
        if message is not None and message["type"] == "lifespan.shutdown.failed":
            raise LifespanFailedError(message.get("message") or "the app's shutdown failed")

    async def _run(self) -> None:
        try:
            await self.app(self.scope, self._to_app.get, self._send)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                logger.info("app_lifespan_ended", error=repr(exc))
        finally:
            # Whatever the app did, whoever waits for its next message must not wait forever.
            self._from_app.put_nowait(None)

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)

    async def _finish(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task
