"""The engine, made in the app's lifespan, and a session per request."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from inventory import config


def make_sessionmaker() -> async_sessionmaker[AsyncSession]:
    engine = create_async_engine(config.DATABASE_URL, pool_size=3, max_overflow=2)
    return async_sessionmaker(engine, expire_on_commit=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.state.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
