"""What the stack answers itself, for any app: `/healthz`, `/readyz` and `/metrics`.

Raw ASGI, ahead of the app's own routing: the app cannot shadow them, they are not in its
OpenAPI, and a probe costs no framework. Each is a `starlette.routing.Route` only so that the
request metrics label it by its path like any route.
"""

import asyncio
import configparser
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.observability.metrics import render_metrics
from service.stack.engines import UNAVAILABLE_SQLSTATE_CLASSES, ping, schema_revision
from service.stack.heads import Revisions, alembic_revisions

logger = structlog.get_logger(__name__)

_UNDEFINED_TABLE = "42P01"

ReadyCheck = Callable[[], Awaitable[object]]


def migration_revisions(alembic_ini: Path) -> Revisions:
    """The revisions of the migrations `alembic_ini` names (its `script_location`,
    relative to the file's own directory, or `%(here)s/...`; `version_locations` if set)."""
    if not alembic_ini.is_file():
        msg = f"MIGRATIONS={alembic_ini}: no such file"
        raise FileNotFoundError(msg)
    here = alembic_ini.resolve().parent
    config = configparser.ConfigParser(defaults={"here": str(here)})
    config.read(alembic_ini)
    if not config.has_option("alembic", "script_location"):
        msg = f"MIGRATIONS={alembic_ini}: no script_location in its [alembic] section"
        raise ValueError(msg)
    script_location = here / config.get("alembic", "script_location")
    locations = config.get("alembic", "version_locations", fallback="")
    directories = [here / part for part in locations.replace(",", " ").split()] or [
        script_location / "versions"
    ]
    revisions = Revisions(frozenset(), frozenset())
    for directory in directories:
        revisions |= alembic_revisions(directory)
    return revisions


def _sqlstate(exc: DBAPIError) -> str:
    original = exc.orig
    return str(getattr(original, "sqlstate", None) or getattr(original, "pgcode", None) or "")


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or _sqlstate(exc).startswith(UNAVAILABLE_SQLSTATE_CLASSES)
    return isinstance(exc, OSError | TimeoutError)


@dataclass(slots=True)
class Readiness:
    """Ready when the app's lifespan has started, every engine it made gives a connection,
    the first engine's database is not behind `revisions` (when migrations are configured:
    at a head, or at a revision this code does not know, which a release's expand step
    made before this code's successor starts), and `ready_check` (READY_CHECK) returns."""

    engines: Callable[[], list[tuple[str, Engine]]]
    revisions: Revisions | None
    ready_check: ReadyCheck | None
    timeout: float
    started: bool = field(default=False)

    async def reason(self) -> str | None:
        """Why the app is not ready, or None when it is."""
        if not self.started:
            return "the app is starting"
        engines = self.engines()
        try:
            async with asyncio.timeout(self.timeout):
                return await self._checks(engines)
        except TimeoutError:
            return "database unreachable"
        except Exception as exc:
            if _unreachable(exc):
                return "database unreachable"
            if isinstance(exc, DBAPIError):
                return f"the readiness check failed: {type(exc.orig).__name__} ({_sqlstate(exc)})"
            raise

    async def _checks(self, engines: list[tuple[str, Engine]]) -> str | None:
        for _label, engine in engines:
            await ping(engine)
        if self.revisions is not None and engines:
            try:
                current = await schema_revision(engines[0][1])
            except DBAPIError as exc:
                if _sqlstate(exc) == _UNDEFINED_TABLE:
                    return "schema not migrated: no alembic_version table"
                raise
            if self.revisions.behind(current):
                expected = ", ".join(sorted(self.revisions.heads))
                return f"schema at {current}, expected {expected}"
        if self.ready_check is not None:
            try:
                await self.ready_check()
            except Exception as exc:
                if _unreachable(exc):
                    raise
                logger.warning("ready_check_failed", error=repr(exc))
                return f"READY_CHECK: {exc}" if str(exc) else f"READY_CHECK: {type(exc).__name__}"
        return None


async def _send_body(
    send: Send, status: int, body: bytes, content_type: bytes = b"application/json"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Probes:
    """The stack's own endpoints, by path."""

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness
        self.routes = {
            "/healthz": Route("/healthz", self.healthz),
            "/readyz": Route("/readyz", self.readyz),
            "/metrics": Route("/metrics", self.metrics),
        }

    def route(self, scope: Scope) -> Route | None:
        """The probe this request is for, if any."""
        return self.routes.get(scope["path"])

    async def serve(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer `scope` with `route`'s probe (GET and HEAD only)."""
        if scope["method"] not in ("GET", "HEAD"):
            await _send_body(send, 405, b'{"detail":"Method Not Allowed"}')
            return
        await route.endpoint(send)

    async def healthz(self, send: Send) -> None:
        """Liveness: the process runs and its event loop answers. Touches no database."""
        await _send_body(send, 200, b'{"status":"ok"}')

    async def readyz(self, send: Send) -> None:
        """Readiness (`Readiness`): 200 ready, else 503 with the reason."""
        reason = await self.readiness.reason()
        if reason is None:
            await _send_body(send, 200, b'{"status":"ready"}')
            return
        body = orjson.dumps({"status": "unavailable", "reason": reason})
        await _send_body(send, 503, body)

    async def metrics(self, send: Send) -> None:
        """Every worker's metrics summed (multiprocess), or this process's alone."""
        await _send_body(send, 200, await render_metrics(), CONTENT_TYPE_LATEST.encode())
