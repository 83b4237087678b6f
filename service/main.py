"""The notes service: the FastAPI app, built by the factory `create_app()`.

It is one app among others behind the stack: gunicorn's workers serve `APP`
(default `service.main:create_app()`) through `service.stack.asgi`, which adds the probes,
metrics, logs and the deadline around it. Importing this module reads no setting and opens no
socket.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI

from service.config import Settings, get_settings
from service.database.connections import create_database
from service.http.errors import register_error_handlers
from service.idempotency import service as idempotency
from service.notes import counts
from service.notes.router import router as notes_router
from service.observability import metrics

logger = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; every resource that opens a socket is made later, in the lifespan."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        database = create_database(settings)
        logger.info(
            "database_engine_created",
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        try:
            with metrics.sampled(database.sample_waiting):
                async with (
                    idempotency.expiring_keys(
                        database=database,
                        ttl=settings.idempotency_key_ttl,
                        interval=settings.idempotency_cleanup_interval,
                    ),
                    counts.folding(database=database),
                ):
                    yield {"database": database, "settings": settings}
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
    app.include_router(notes_router)
    register_error_handlers(app)
    return app
