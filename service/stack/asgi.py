"""The stack around any ASGI app: what every worker serves.

gunicorn's workers (and `make dev`'s uvicorn) serve `create_stack()`, which imports the app
`APP` names, from `APP_PATH`, and wraps it without touching its code:

- `/healthz`, `/readyz` and `/metrics` (`service.stack.probes`), ahead of the app's routes;
- every other request through `RequestMiddleware`: the deadline, `Server-Timing`, the request
  id bound to every log line, RED metrics labelled by the template of the route that served
  it, the access line, and a JSON 500 for an exception the app lets escape;
- the app's lifespan inside the stack's, which counts the worker, samples its CPU, memory,
  requests in flight and every SQLAlchemy engine's pool (`service.stack.engines`), and marks
  the app ready once its lifespan has started;
- JSON logs: the stack's structlog configuration renders the app's stdlib and structlog
  lines alike.
"""

import importlib
import sys
from pathlib import Path
from typing import Any, cast

import structlog
from gunicorn.errors import AppImportError
from gunicorn.util import import_app
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.config import ConfigurationError, WorkerSettings, load
from service.http.middleware import RequestMiddleware
from service.observability import metrics
from service.observability.logging import configure_logging
from service.observability.requests import RequestObserver
from service.stack.engines import REGISTRY, pool_capacity, watch_engines
from service.stack.lifespan import AppLifespan, LifespanFailedError
from service.stack.probes import Probes, Readiness, ReadyCheck, migration_revisions

logger = structlog.get_logger(__name__)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A Starlette app's last-resort answer, in JSON like every other error of the stack."""
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500)


class StackApp:
    """An ASGI app, wrapped by the stack (see the module's docstring)."""

    def __init__(
        self, app: ASGIApp, settings: WorkerSettings, *, engines_mark: int | None = None
    ) -> None:
        self.app = app
        self.settings = settings
        if isinstance(app, Starlette) and not (
            500 in app.exception_handlers or Exception in app.exception_handlers
        ):
            # Starlette's own last resort answers text/plain; the stack's errors are JSON.
            app.add_exception_handler(Exception, _internal_error)
        revisions = migration_revisions(settings.migrations) if settings.migrations else None
        # The app's engines: made from its import (or from now) to the end of its startup.
        self.engines_start = REGISTRY.mark() if engines_mark is None else engines_mark
        self.engines_end: int | None = None
        self.readiness = Readiness(
            engines=self.engines,
            revisions=revisions,
            ready_check=_import_ready_check(settings.ready_check),
            timeout=settings.ready_timeout,
        )
        self.probes = Probes(self.readiness)
        self.observer = RequestObserver(
            request_metrics=settings.request_metrics,
            access_log=settings.access_log,
            log_level=settings.log_level,
            log_format=settings.log_format,
        )
        self.handler = RequestMiddleware(
            self._dispatch, timeout=settings.request_timeout, observer=self.observer
        )
        self.version = str(getattr(app, "version", None) or "unknown")

    def engines(self) -> list[tuple[str, Engine]]:
        """The live SQLAlchemy engines of the app, with their labels."""
        return REGISTRY.between(self.engines_start, self.engines_end)

    def ready_report(self) -> dict[str, object]:
        """What the worker's ready marker says of the app (`service.runtime.worker`): its
        engines and the connections their pools open at most together, for the connection
        budget (None when a pool is unbounded)."""
        capacities = [pool_capacity(engine.pool) for _, engine in self.engines()]
        bounded = all(capacity is not None for capacity in capacities)
        return {
            "engines": len(capacities),
            "pool_capacity": sum(c for c in capacities if c is not None) if bounded else None,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handler(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        probe = self.probes.route(scope)
        if probe is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = probe
        await self.probes.serve(probe, scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"  # noqa: S101 (the ASGI protocol's order)
        app_lifespan = AppLifespan(self.app, scope)
        samplers = (REGISTRY.sampler(self.engines), self.observer.sample_in_progress)
        async with metrics.worker_metrics(self.version, samplers):
            try:
                await app_lifespan.startup()
            except LifespanFailedError as exc:
                logger.error("app_startup_failed", error=str(exc))
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                raise  # as Starlette does: the server stops the worker either way
            self.engines_end = REGISTRY.mark()
            self.readiness.started = True
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            self.readiness.started = False
            try:
                await app_lifespan.shutdown()
            except LifespanFailedError as exc:
                logger.error("app_shutdown_failed", error=str(exc))
                await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                raise
        await send({"type": "lifespan.shutdown.complete"})


def _import_ready_check(spec: str | None) -> ReadyCheck | None:
    if spec is None:
        return None
    module_name, _, name = spec.partition(":")
    if not name:
        msg = f"READY_CHECK={spec!r}: expected pkg.module:callable"
        raise ConfigurationError(msg)
    try:
        check = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        msg = f"READY_CHECK={spec!r}: {exc}"
        raise ConfigurationError(msg) from None
    if not callable(check):
        msg = f"READY_CHECK={spec!r} is not callable"
        raise ConfigurationError(msg)
    return cast(ReadyCheck, check)


def wrap(app: ASGIApp, settings: WorkerSettings | None = None) -> StackApp:
    """`app` behind the stack, with `settings` (else read from the environment).

    Engines the app made before this call are not the stack's to watch; `create_stack`
    watches from before the app's import.
    """
    settings = settings or load(WorkerSettings)
    configure_logging(settings.log_level, settings.log_format)
    watch_engines(settings.stack_name, settings.db_pooler)
    return StackApp(app, settings)


def load_app(spec: str, app_path: Path) -> Any:
    """Import the app `spec` names (gunicorn's syntax) with `app_path` first on the path."""
    path = str(app_path.resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        return import_app(spec)
    except (AppImportError, ImportError) as exc:
        msg = f"APP={spec!r} (APP_PATH={app_path}): {exc}"
        raise ConfigurationError(msg) from exc


def create_stack() -> StackApp:
    """The app `APP` names, wrapped: what gunicorn's workers and `make dev` serve."""
    settings = load(WorkerSettings)
    configure_logging(settings.log_level, settings.log_format)
    watch_engines(settings.stack_name, settings.db_pooler)
    mark = REGISTRY.mark()
    app = load_app(settings.app, settings.app_path)
    if not callable(app):
        msg = f"APP={settings.app!r} is not an ASGI app: {type(app).__name__}"
        raise ConfigurationError(msg)
    stack = StackApp(cast(ASGIApp, app), settings, engines_mark=mark)
    logger.info("app_loaded", app=settings.app, app_path=str(settings.app_path))
    return stack
