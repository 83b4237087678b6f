"""Every statement the notes service runs, timed as the table grows: 10 thousand, 1 million and
10 million notes (and as many idempotency keys as a tenth of the notes, half of them
expired), side by side.

    uv run python -m loadtest.bench.statements [--sizes 10000 1000000 10000000]

The statements are the service's own compiled SQL (service.notes.service,
service.notes.counts, service.idempotency.service), each timed from asyncpg (a round trip
included), best of five; writes run in a transaction that is rolled back. The table grows with
`make seed`'s statement. Printed: one row per statement, one column per size, and the ratio of
the largest size to the smallest. DATABASE_URL names a server; the benchmark makes and drops
its own database there.
"""

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg

from deploy.native.seed import seed
from loadtest.bench.harness import bench_database
from service.database.urls import asyncpg_dsn
from service.idempotency import service as idempotency
from service.notes import counts
from service.notes import service as notes

ROUNDS = 5
Timed = Callable[[asyncpg.Connection, int], Awaitable[object]]


async def _in_rolled_back_transaction(
    connection: asyncpg.Connection, sql: str, *arguments: object
) -> None:
    transaction = connection.transaction()
    await transaction.start()
    try:
        await connection.execute(sql, *arguments)
    finally:
        await transaction.rollback()


def statements() -> dict[str, Timed]:
    """Each statement, as a call given a connection and the table's size."""
    first = notes._list_query(after=False, filtered=False)
    after = notes._list_query(after=True, filtered=False)
    filtered = notes._list_query(after=True, filtered=True)
    expired = idempotency._DELETE_EXPIRED
    claim = idempotency._CLAIM
    stored = idempotency._STORED
    ttl = timedelta(days=1)

    def deep(size: int) -> int:
        return max(size - 100, 0)

    return {
        "get by id": lambda c, n: c.fetchrow(notes._SELECT_NOTE.sql, n // 2),
        "list, first page": lambda c, n: c.fetch(first.sql, *first.arguments(limit=20)),
        "list, cursor at the end": lambda c, n: c.fetch(
            after.sql, *after.arguments(limit=20, after_id=deep(n))
        ),
        "list, completed=true, first page": lambda c, n: c.fetch(
            filtered.sql, *filtered.arguments(limit=20, after_id=0, state=True)
        ),
        "list, completed=true, cursor at the end": lambda c, n: c.fetch(
            filtered.sql, *filtered.arguments(limit=20, after_id=deep(n), state=True)
        ),
        "stats": lambda c, n: c.fetchrow(counts._SUM.sql),
        "idempotency: claim a new key": lambda c, n: _in_rolled_back_transaction(
            c,
            claim.sql,
            *claim.arguments(
                request_key=f"new-{time.time_ns()}", request_fingerprint=b"f", ttl=ttl
            ),
        ),
        "idempotency: read a stored key": lambda c, n: c.fetchrow(
            stored.sql, *stored.arguments(request_key=f"key-{n // 20}")
        ),
        "idempotency: expire a batch of 1,000": lambda c, n: _in_rolled_back_transaction(
            c, expired.sql, *expired.arguments(ttl=ttl, batch=1000)
        ),
    }


async def keys(connection: asyncpg.Connection, count: int, start: int) -> None:
    """`count` more idempotency keys, their ages spread over two days (half expired)."""
    await connection.execute(
        "INSERT INTO idempotency_keys (key, fingerprint, status, created_at) "
        "SELECT 'key-' || n, 'f', 201, now() - (n % 172800) * interval '1 second' "
        "FROM generate_series($1::bigint, $2::bigint) AS n",
        start,
        start + count - 1,
    )
    await connection.execute("ANALYZE idempotency_keys")


async def measure(url: str, sizes: list[int]) -> dict[str, list[float]]:
    """Each statement's best time in ms at each size."""
    timings: dict[str, list[float]] = {name: [] for name in statements()}
    seeded = 0
    for size in sizes:
        await seed(url, size - seeded)
        connection = await asyncpg.connect(asyncpg_dsn(url), statement_cache_size=0)
        try:
            await keys(connection, (size - seeded) // 10, seeded // 10)
            seeded = size
            for name, timed in statements().items():
                best = float("inf")
                for _ in range(ROUNDS):
                    started = time.perf_counter()
                    await timed(connection, size)
                    best = min(best, time.perf_counter() - started)
                timings[name].append(best * 1000)
        finally:
            await connection.close()
        print(f"statements: {size:,} notes measured", flush=True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench.statements")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    with bench_database(0) as database:
        timings = asyncio.run(measure(database.url, sizes))
    print()
    print(
        "| statement | "
        + " | ".join(f"{size:,} notes" for size in sizes)
        + " | largest / smallest |"
    )
    print("| --- | " + " | ".join("---" for _ in sizes) + " | --- |")
    for name, values in timings.items():
        cells = " | ".join(f"{value:.2f} ms" for value in values)
        print(f"| {name} | {cells} | {values[-1] / values[0]:.1f}x |")


if __name__ == "__main__":
    main()
