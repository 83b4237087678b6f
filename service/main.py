"""The ASGI application, built by the factory `create_app()` that servers call.

Importing this module reads no setting and opens no socket: gunicorn serves
`service.main:create_app()`, uvicorn `--factory service.main:create_app`.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI

from service import health
from service.config import Settings, get_settings
from service.database.connections import create_database
from service.http.errors import register_error_handlers
from service.http.middleware import RequestMiddleware
from service.idempotency import service as idempotency
from service.notes.router import router as notes_router
from service.observability import metrics
from service.observability.logging import configure_logging
from service.observability.requests import RequestObserver

logger = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; every resource that opens a socket is made later, in the lifespan."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    schema_heads = health.alembic_heads()
    observer = RequestObserver(
        request_metrics=settings.request_metrics,
        access_log=settings.access_log,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        database = create_database(settings)
        logger.info(
            "database_engine_created",
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        try:
            async with (
                metrics.worker_metrics(
                    app.version, (database.sample_pool, observer.sample_in_progress)
                ),
                idempotency.expiring_keys(
                    database=database,
                    ttl=settings.idempotency_key_ttl,
                    interval=settings.idempotency_cleanup_interval,
                ),
            ):
                yield {"database": database, "settings": settings, "schema_heads": schema_heads}
        finally:
            await database.dispose()
            logger.info("database_engine_disposed")

    app = FastAPI(
        title="notes",
        version="0.1.0",
        lifespan=lifespan,
        # Interactive docs are a development aid; production serves only the API.
        docs_url="/docs" if settings.environment != "production" else None,
        redoc_url=None,
        # The stack exports Prometheus metrics and JSON logs of its own; FastAPI's OpenTelemetry
        # hooks would otherwise ask on every request whether a provider is configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # The API first: FastAPI tries the app's routes in order, and the probes and scrapes are
    # a few requests a second against thousands.
    for router in (notes_router, health.router, metrics.router):
        app.include_router(router)
    register_error_handlers(app)
    app.add_middleware(RequestMiddleware, timeout=settings.request_timeout, observer=observer)
    return app
