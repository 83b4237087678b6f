"""What is recorded of every request: RED metrics by route template, and the access line.

Both need the same facts (route template, status, duration), so they are measured once, by
`service.http.middleware.RequestMiddleware` calling `RequestObserver.start` and `finish`.
"""

import logging
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from starlette.routing import Mount
from starlette.types import Scope

from service.config import LogFormat, LogLevel
from service.http.route_views import serving_view
from service.observability.metrics import HTTP_DURATION, HTTP_IN_PROGRESS, HTTP_REQUESTS

logger = structlog.get_logger("service.access")

# The access line: a UTC datetime as "...Z", and the line's own newline.
_LINE = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE
# The label every path that matches no route shares, so scanners cannot mint new values.
UNMATCHED_ROUTE = "<unmatched>"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def served_route(scope: Scope, root_path: str = "") -> str:
    """The template of the route that served this request, once the app has routed it: its
    path as declared, after every prefix of `include_router` and every mount above it, from
    `root_path` (the app's own, where the request entered) on. Unmatched requests share one
    value.

    Starlette and FastAPI put the route they chose in `scope["route"]` and the path a mount
    consumed in `root_path`. A mount whose app routes nothing itself (static files, a bare
    ASGI app), or under which no route matched, is labelled as the mount: `/static/{path}`.
    A mount's own path parameters, if it has any, are labelled by their values.
    """
    route = scope.get("route")
    mounted = scope.get("root_path", "")[len(root_path) :]
    if route is None or isinstance(route, Mount):
        return f"{mounted}/{{path}}" if mounted else UNMATCHED_ROUTE
    # scope["route"] is the route as its router declared it; its view carries the prefixes.
    template = getattr(serving_view(scope, route), "path_format", None)
    return mounted + template if isinstance(template, str) else UNMATCHED_ROUTE


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return str(value.decode("latin-1"))
    return uuid.uuid4().hex


@dataclass(slots=True, eq=False)
class Observation:
    """One request being observed: what its metrics and access line will say."""

    scope: Scope
    method: str
    # Where the request entered the app: what served_route measures mounts from.
    root_path: str
    request_id: str
    started: float


class RequestObserver:
    """Counts and times requests by method and the template of the route that served them,
    tracks those in flight, binds `request_id` (nginx's X-Request-ID, else a new one) to every
    log line of the request, and writes one `request` line once the response has been sent.

    **In progress.** A request's route is known only once the app has routed it, after it
    entered this observer, so `http_requests_in_progress` is not counted up and down around
    the request: the requests in flight are kept in a set, and `sample_in_progress` (every
    second, with the worker's other gauges) sets the gauge from them, by the route each is
    being served by. Exact counts per route whatever the app's routing (nested routers, mounts,
    middleware that routes in a task of its own), no gauge write on the request's path, and a
    gauge at most a second old, against a scrape interval of 15 s.

    `client_ip` is the scope's client, which uvicorn's proxy-headers handling has already set
    from the X-Forwarded-For that nginx wrote. Unknown methods count as OTHER.

    The access line is written with orjson straight to stdout, the same JSON object the shared
    structlog chain would render (timestamp, level, event, logger, pid, then the fields) at a
    fifth of its cost; with LOG_FORMAT=console it goes through structlog like any other line.
    """

    def __init__(
        self,
        *,
        request_metrics: bool = True,
        access_log: bool = True,
        log_level: LogLevel = "INFO",
        log_format: LogFormat = "json",
    ) -> None:
        self.request_metrics = request_metrics
        # The access line is at INFO: a higher LOG_LEVEL drops it, as it drops any INFO line.
        self.access_log = access_log and logging.getLevelName(log_level) <= logging.INFO
        self.json_lines = log_format == "json"
        self.pid = os.getpid()
        self.stdout = sys.stdout.fileno()
        self.in_flight: set[Observation] = set()
        # What the in-progress gauge says now, by method and route, for the non-zero values.
        self._in_progress: dict[tuple[str, str], int] = {}
        # The metrics' label children, looked up once per method and route (and status):
        # prometheus_client's labels() takes a lock and builds a key on every call.
        self._durations: dict[tuple[str, str], Any] = {}
        self._counts: dict[tuple[str, str, int], Any] = {}

    def start(self, scope: Scope) -> Observation:
        """A request has arrived."""
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
        request_id = _request_id(scope)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        observation = Observation(
            scope, method, scope.get("root_path", ""), request_id, time.perf_counter()
        )
        if self.request_metrics:
            self.in_flight.add(observation)
        return observation

    def finish(self, observation: Observation, status: int) -> None:
        """Its response has been sent (or it failed): record it, and write its line."""
        duration = time.perf_counter() - observation.started
        route = served_route(observation.scope, observation.root_path)
        if self.request_metrics:
            self.in_flight.discard(observation)
            self._duration(observation.method, route).observe(duration)
            self._count(observation.method, route, status).inc()
        if self.access_log:
            self._write_access_line(observation, route, status, duration)

    def sample_in_progress(self) -> None:
        """Set `http_requests_in_progress` to the requests in flight now, by method and the
        route serving each (a request not routed yet counts as unmatched)."""
        now = Counter(
            (observation.method, served_route(observation.scope, observation.root_path))
            for observation in self.in_flight
        )
        for key in self._in_progress.keys() | now.keys():
            if self._in_progress.get(key, 0) != now[key]:
                HTTP_IN_PROGRESS.labels(*key).set(now[key])
        self._in_progress = dict(now)

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

    def _write_access_line(
        self, observation: Observation, route: str, status: int, duration: float
    ) -> None:
        scope = observation.scope
        client = scope.get("client")
        client_ip = client[0] if client else None
        duration_ms = round(duration * 1000, 3)
        if not self.json_lines:
            logger.info(
                "request", method=scope["method"], path=scope["path"], route=route,
                status=status, duration_ms=duration_ms, client_ip=client_ip,
            )  # fmt: skip
            return
        line = {
            # orjson writes the datetime as the shared chain's TimeStamper does ("...Z"), at a
            # third of isoformat()'s cost.
            "timestamp": datetime.now(UTC),
            "level": "info",
            "event": "request",
            "logger": "service.access",
            "pid": self.pid,
            "request_id": observation.request_id,
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "client_ip": client_ip,
        }
        # One write(2) per line, as structlog's own lines: lines from several workers to one
        # file (O_APPEND) or pipe (under PIPE_BUF) never interleave.
        os.write(self.stdout, orjson.dumps(line, default=str, option=_LINE))
