"""The uvicorn worker class gunicorn runs, with a shutdown that drops no request.

uvicorn's own shutdown closes idle keep-alive connections at once. nginx may at that very
moment be writing a request into one of them: the request is lost (a 502, and nginx will not
retry a POST). Here a worker that is shutting down keeps idle connections open, answers any
request that still arrives on them with `Connection: close`, and lets nginx close the rest when
its upstream `keepalive_timeout` (shorter than gunicorn's `keepalive`) runs out. Reload, scale
down and `max_requests` recycling all end workers this way.
"""

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker


class CoalescingTransport:
    """A connection's transport that writes, in one call at the end of the event loop's turn,
    everything written to it during that turn.

    uvicorn writes a response's head and its body with two calls. A worker killed between
    them leaves nginx a head without its body: nginx has already passed the head on, so it
    cannot retry the request on another worker, and the client gets a cut answer. Written
    together, a small response is in the socket whole or not at all (one system call fewer,
    too). Everything else is the transport's own.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        """Write what is pending now."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol whose shutdown waits for the client to close idle connections, and
    whose responses leave in one write (`CoalescingTransport`)."""

    draining = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        coalescing = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, coalescing))

    def shutdown(self) -> None:
        """Finish the request in flight, then close; leave an idle connection to the client."""
        self.draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False

    def on_headers_complete(self) -> None:
        """A request that arrives while draining is served, then the connection closes."""
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False


class Worker(UvicornWorker):
    """uvloop + httptools, the draining shutdown, and a readiness marker.

    `ready_marker` (set by gunicorn.conf.py's post_fork hook) is created once the app's
    lifespan has started and the worker serves: `make reload` waits for these before it
    retires the old workers, and the connection budget reads what it says of the app's pools.
    """

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "uvloop", "http": DrainingHttpToolsProtocol}
    ready_marker: Path | None = None
    _marked_ready = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # gunicorn kills a worker graceful_timeout after asking it to stop; uvicorn must give
        # up on stragglers a little before that so the lifespan shutdown (engine dispose) runs.
        self.config.timeout_graceful_shutdown = max(1, int(self.cfg.graceful_timeout) - 5)

    async def callback_notify(self) -> None:
        """Heartbeat to the master; the first one comes right after the lifespan started.

        The marker holds what the stack measured of the app (`StackApp.ready_report`: its
        engines and their pools' capacity), which the connection budget reads.
        """
        self.notify()
        if not self._marked_ready and self.ready_marker is not None:
            report = getattr(self.wsgi, "ready_report", None)
            self.ready_marker.write_text(json.dumps(report() if report else {}))
            self._marked_ready = True
