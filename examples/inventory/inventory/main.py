"""The app: `inventory.main:app`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response

from inventory.api.main import api_router
from inventory.db import make_sessionmaker

logger = logging.getLogger("inventory")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    sessionmaker = make_sessionmaker()
    logger.info("inventory started")
    yield {"sessionmaker": sessionmaker}
    await sessionmaker.kw["bind"].dispose()


app = FastAPI(title="inventory", version="1.2.0", lifespan=lifespan)
app.include_router(api_router, prefix="/api/v1")

# A sub-application with routes of its own, mounted as the FastAPI docs show.
public = FastAPI()


@public.get("/ping")
async def ping(response: Response) -> dict[str, str]:
    response.headers["Cache-Control"] = "public, max-age=60"
    return {"pong": "inventory"}


app.mount("/public", public)
