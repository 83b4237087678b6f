"""The uvicorn worker class gunicorn runs, with a shutdown that drops no request.

uvicorn's own shutdown closes idle keep-alive connections at once. nginx may at that very
moment be writing a request into one of them: the request is lost (a 502, and nginx will not
retry a POST). Here a worker that is shutting down keeps idle connections open, answers any
request that still arrives on them with `Connection: close`, and lets nginx close the rest when
its upstream `keepalive_timeout` (shorter than gunicorn's `keepalive`) runs out. Reload, scale
down and `max_requests` recycling all end workers this way.
"""

import json
from pathlib import Path
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol whose shutdown waits for the client to close idle connections."""

    draining = False

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
