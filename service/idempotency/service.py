"""Claiming a key, storing the outcome with the write, replaying it, and forgetting old keys.

A write with a key runs in one transaction that first claims the key (an INSERT on its
primary key), then writes, then stores the response beside the key. A concurrent request
with the same key waits on that INSERT until the first transaction ends: if it committed,
the second finds the stored outcome and replays it; if it rolled back (the write failed),
the second claims the key and writes. So a key gives at most one committed write, whatever
the timing, and a write that failed can be retried.
"""

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import structlog
from fastapi import Response
from sqlalchemy import Interval, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from service.database.connections import Database, DatabaseUnavailableError
from service.database.statements import compiled
from service.exceptions import UnprocessableRequestError
from service.idempotency.models import idempotency_keys as keys

logger = structlog.get_logger(__name__)


REPLAYED_HEADER = "Idempotent-Replayed"
# The response headers a replay must repeat; the rest are per response (Server-Timing, ...).
_STORED_HEADERS = ("content-type", "etag", "location")
# Any constant bigint works; this one spells "idemkeys" in ASCII.
_CLEANUP_LOCK_ID = 0x6964656D6B657973
_CLEANUP_BATCH = 1000


class IdempotencyKeyReusedError(UnprocessableRequestError):
    """The key was first sent with another request: replaying that outcome would lie."""

    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was sent with a different request (method, path, "
            "If-Match or body); use a new key for a new request",
            loc=("header", "idempotency-key"),
            type="idempotency_key_reused",
        )


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """A write the client marked with a key: the key, what the request was, and how long
    the key is kept (seconds)."""

    key: str
    fingerprint: bytes
    ttl: float


def fingerprint(method: str, path: str, if_match: str | None, body: bytes) -> bytes:
    """What identifies a request for its retries: SHA-256 of its method, path, If-Match
    and body bytes."""
    return hashlib.sha256(orjson.dumps([method, path, if_match, body.hex()])).digest()


_expired = keys.c.created_at < func.now() - bindparam("ttl", type_=Interval)

# Bound parameters may not share a column's name in INSERT and UPDATE: hence the prefixes.
_CLAIM = compiled(
    insert(keys)
    .values(key=bindparam("request_key"), fingerprint=bindparam("request_fingerprint"))
    # An expired key is free again: take it over as if it were new.
    .on_conflict_do_update(
        index_elements=[keys.c.key],
        set_={"fingerprint": bindparam("request_fingerprint"), "created_at": func.now()},
        where=_expired,
    )
    .returning(keys.c.key)
)
_STORED = compiled(
    select(keys.c.fingerprint, keys.c.status, keys.c.headers, keys.c.body).where(
        keys.c.key == bindparam("request_key")
    )
)
_STORE = compiled(
    update(keys)
    .where(keys.c.key == bindparam("request_key"))
    .values(
        status=bindparam("response_status"),
        headers=bindparam("response_headers"),
        body=bindparam("response_body"),
    )
)
_LOCK_CLEANUP = compiled(select(func.pg_try_advisory_xact_lock(bindparam("lock_id"))))
_DELETE_EXPIRED = compiled(
    delete(keys).where(
        keys.c.key.in_(
            select(keys.c.key)
            .where(_expired)
            .order_by(keys.c.created_at)
            .limit(bindparam("batch"))
            .scalar_subquery()
        )
    )
)


async def run(
    *,
    database: Database,
    request: IdempotentRequest | None,
    write: Callable[[asyncpg.Connection], Awaitable[Response]],
) -> Response:
    """Run `write`: without a key in autocommit (its statements commit as they run); with
    one, at most once, in a transaction that stores its response: a retry gets that response
    again, marked with `Idempotent-Replayed: true`."""
    if request is None:
        async with database.connection() as connection:
            return await write(connection)
    async with database.transaction() as connection:
        ttl = timedelta(seconds=request.ttl)
        claim = _CLAIM.arguments(
            request_key=request.key, request_fingerprint=request.fingerprint, ttl=ttl
        )
        if await connection.fetchval(_CLAIM.sql, *claim) is None:
            return await _replay(connection=connection, request=request)
        response = await write(connection)
        headers = {
            name: response.headers[name] for name in _STORED_HEADERS if name in response.headers
        }
        store = _STORE.arguments(
            request_key=request.key,
            response_status=response.status_code,
            response_headers=headers,
            response_body=bytes(response.body),
        )
        await connection.execute(_STORE.sql, *store)
        return response


async def _replay(*, connection: asyncpg.Connection, request: IdempotentRequest) -> Response:
    # The claim waited for any transaction holding the key, so what it stored is visible.
    stored = await connection.fetchrow(_STORED.sql, request.key)
    if stored["fingerprint"] != request.fingerprint:
        raise IdempotencyKeyReusedError
    # Database registers the jsonb codec: objects in, objects out.
    headers: dict[str, Any] = {**stored["headers"], REPLAYED_HEADER: "true"}
    return Response(content=stored["body"], status_code=stored["status"], headers=headers)


async def delete_expired(*, database: Database, ttl: float) -> int:
    """Delete keys older than `ttl` seconds, a batch per transaction; one worker at a time."""
    deleted = 0
    arguments = _DELETE_EXPIRED.arguments(ttl=timedelta(seconds=ttl), batch=_CLEANUP_BATCH)
    while True:
        async with database.transaction() as connection:
            if not await connection.fetchval(_LOCK_CLEANUP.sql, _CLEANUP_LOCK_ID):
                return deleted
            status = await connection.execute(_DELETE_EXPIRED.sql, *arguments)
        count = int(status.rsplit(" ", 1)[1])  # "DELETE <count>"
        deleted += count
        if count < _CLEANUP_BATCH:
            return deleted


@asynccontextmanager
async def expiring_keys(*, database: Database, ttl: float, interval: float) -> AsyncIterator[None]:
    """For a worker's lifetime, delete expired keys every `interval` seconds (with jitter, so
    the workers do not all try at once; the advisory lock lets one of them run at a time)."""

    async def delete_forever() -> None:
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))  # noqa: S311 (jitter)
            try:
                deleted = await delete_expired(database=database, ttl=ttl)
            except DatabaseUnavailableError as exc:
                logger.warning("idempotency_cleanup_failed", error=str(exc))
                continue
            except Exception:
                # A bug, loudly; the next round may still succeed.
                logger.exception("idempotency_cleanup_failed")
                continue
            if deleted:
                logger.info("idempotency_keys_expired", deleted=deleted)

    cleaner = asyncio.create_task(delete_forever())
    try:
        yield
    finally:
        cleaner.cancel()
