"""What is recorded of every request: RED metrics by route template, and the access line.

Both need the same facts (route template, status, duration), so they are measured once, by
`service.http.middleware.RequestMiddleware` calling `RequestObserver.start` and `finish`.
"""

import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from starlette.routing import BaseRoute
from starlette.types import Scope

from service.config import LogFormat, LogLevel
from service.observability.metrics import HTTP_DURATION, HTTP_IN_PROGRESS, HTTP_REQUESTS

logger = structlog.get_logger("service.access")

# The label every path that matches no route shares, so scanners cannot mint new values.
UNMATCHED_ROUTE = "<unmatched>"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PARAMETER = re.compile(r"{[^}]*}")


class RouteResolver:
    """Finds the template of the route a request will be served by, before it is served.

    Starlette tries routes in order. A path without parameters is looked up in a dict, unless
    an earlier route with parameters would match it first; other paths are tried against the
    routes with parameters only, in order. Same answer as the router, a fraction of the cost.
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.dynamic: list[BaseRoute] = []
        self.static: dict[str, str] = {}
        for route in routes:
            path = getattr(route, "path", None)
            if not isinstance(path, str):
                continue
            if _PARAMETER.search(path):
                self.dynamic.append(route)
            elif path not in self.static and not self._scan(path):
                self.static[path] = path

    def _scan(self, path: str, method: str = "GET") -> str | None:
        # What Starlette's Route.matches decides, without building a child scope: a full match
        # when the path and the method fit, a partial one (405) when only the path does.
        partial = None
        for route in self.dynamic:
            if route.path_regex.match(path):  # type: ignore[attr-defined]
                methods = getattr(route, "methods", None)
                if methods is None or method in methods:
                    return str(getattr(route, "path", UNMATCHED_ROUTE))
                if partial is None:
                    partial = str(getattr(route, "path", UNMATCHED_ROUTE))
        return partial

    def resolve(self, scope: Scope) -> str:
        """The route template for this request, or the shared unmatched label."""
        path = scope["path"]
        return self.static.get(path) or self._scan(path, scope["method"]) or UNMATCHED_ROUTE


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return str(value.decode("latin-1"))
    return uuid.uuid4().hex


@dataclass(slots=True)
class Observation:
    """One request being observed: what its metrics and access line will say."""

    scope: Scope
    method: str
    route: str
    request_id: str
    started: float
    in_progress: Any


class RequestObserver:
    """Counts, times and tracks in-flight requests by method and route template, binds
    `request_id` (nginx's X-Request-ID, else a new one) to every log line of the request,
    and writes one `request` line once the response has been sent.

    `client_ip` is the scope's client, which uvicorn's proxy-headers handling has already set
    from the X-Forwarded-For that nginx wrote. Unknown methods count as OTHER.

    The access line is written with orjson straight to stdout, the same JSON object the shared
    structlog chain would render (timestamp, level, event, logger, pid, then the fields) at a
    fifth of its cost; with LOG_FORMAT=console it goes through structlog like any other line.
    """

    def __init__(
        self,
        routes: Sequence[BaseRoute],
        *,
        request_metrics: bool = True,
        access_log: bool = True,
        log_level: LogLevel = "INFO",
        log_format: LogFormat = "json",
    ) -> None:
        self.resolver = RouteResolver(routes)
        self.request_metrics = request_metrics
        # The access line is at INFO: a higher LOG_LEVEL drops it, as it drops any INFO line.
        self.access_log = access_log and logging.getLevelName(log_level) <= logging.INFO
        self.json_lines = log_format == "json"
        self.pid = os.getpid()
        self.stdout = sys.stdout.fileno()
        # The metrics' label children, looked up once per method and route (and status):
        # prometheus_client's labels() takes a lock and builds a key on every call.
        self._in_progress: dict[tuple[str, str], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}
        self._counts: dict[tuple[str, str, int], Any] = {}

    def start(self, scope: Scope) -> Observation:
        """A request has arrived."""
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
        route = self.resolver.resolve(scope)
        request_id = _request_id(scope)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        in_progress = None
        if self.request_metrics:
            in_progress = self._in_progress.get((method, route))
            if in_progress is None:
                in_progress = self._in_progress[method, route] = HTTP_IN_PROGRESS.labels(
                    method, route
                )
            in_progress.inc()
        return Observation(scope, method, route, request_id, time.perf_counter(), in_progress)

    def finish(self, observation: Observation, status: int) -> None:
        """Its response has been sent (or it failed): record it, and write its line."""
        duration = time.perf_counter() - observation.started
        if observation.in_progress is not None:
            observation.in_progress.dec()
            self._duration(observation.method, observation.route).observe(duration)
            self._count(observation.method, observation.route, status).inc()
        if self.access_log:
            self._write_access_line(observation, status, duration)

    def _duration(self, method: str, route: str) -> Any:
        child = self._durations.get((method, route))
        if child is None:
            child = self._durations[method, route] = HTTP_DURATION.labels(method, route)
        return child

    def _count(self, method: str, route: str, status: int) -> Any:
        child = self._counts.get((method, route, status))
        if child is None:
            child = self._counts[method, route, status] = HTTP_REQUESTS.labels(
                method, route, str(status)
            )
        return child

    def _write_access_line(self, observation: Observation, status: int, duration: float) -> None:
        scope = observation.scope
        client = scope.get("client")
        fields = {
            "method": scope["method"],
            "path": scope["path"],
            "route": observation.route,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "client_ip": client[0] if client else None,
        }
        if not self.json_lines:
            logger.info("request", **fields)
            return
        line = {
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "level": "info",
            "event": "request",
            "logger": "service.access",
            "pid": self.pid,
            "request_id": observation.request_id,
            **fields,
        }
        # One write(2) per line, as structlog's own lines: lines from several workers to one
        # file (O_APPEND) or pipe (under PIPE_BUF) never interleave.
        os.write(self.stdout, orjson.dumps(line, default=str) + b"\n")
