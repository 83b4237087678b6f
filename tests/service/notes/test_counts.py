"""The stats counts the writes keep (note_count_deltas: a row per writing statement, added by
triggers in the write's transaction, folded by the app) against `count(*)`, after every kind of
write at once: creates, idempotent replays, flips of `completed`, deletes, statements over many
rows, transactions rolled back, and folds running meanwhile."""

import asyncio
import random
import uuid

import asyncpg
import httpx
from sqlalchemy.engine import URL

from service.database.connections import create_database
from service.database.urls import asyncpg_dsn
from service.notes import counts
from tests.apps import settings_for
from tests.postgres import fresh_database, migrate

NOTES = "/api/v1/notes"


async def table_counts(database_url: URL) -> dict[str, int]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE completed) AS completed FROM notes"
        )
    finally:
        await connection.close()
    total, completed = int(row["total"]), int(row["completed"])
    return {"total": total, "completed": completed, "open": total - completed}


async def api_writer(client: httpx.AsyncClient, seed: int, ids: list[int]) -> None:
    """Creates (some twice with one Idempotency-Key), flips and deletes, through the API."""
    rng = random.Random(seed)
    for _ in range(40):
        roll = rng.random()
        if roll < 0.4 or not ids:
            key = uuid.uuid4().hex
            body = {"text": f"counted {seed}", "completed": rng.random() < 0.5}
            for _ in range(2 if rng.random() < 0.3 else 1):  # a replay writes nothing
                created = await client.post(NOTES, json=body, headers={"Idempotency-Key": key})
                assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        elif roll < 0.75:
            note = rng.choice(ids)
            answer = await client.patch(f"{NOTES}/{note}", json={"completed": rng.random() < 0.5})
            assert answer.status_code in (200, 404), answer.text  # 404: deleted meanwhile
        else:
            note = ids.pop(rng.randrange(len(ids)))
            answer = await client.delete(f"{NOTES}/{note}")
            assert answer.status_code in (204, 404), answer.text


async def sql_writer(database_url: URL, seed: int) -> None:
    """Statements over many rows, and transactions that change rows and roll back; each writer
    on rows of its own (`text`), as two bulk statements over the same rows in different orders
    would deadlock whatever the counting."""
    rng = random.Random(seed)
    mine = f"bulk {seed}"
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for _ in range(15):
            roll = rng.random()
            if roll < 0.3:
                await connection.execute(
                    "INSERT INTO notes (text, completed) "
                    "SELECT $1, n % 3 = 0 FROM generate_series(1, $2) AS n",
                    mine,
                    rng.randint(1, 50),
                )
            elif roll < 0.5:
                await connection.execute(
                    "UPDATE notes SET completed = NOT completed WHERE text = $1 AND id % 3 = $2",
                    mine,
                    rng.randrange(3),
                )
            elif roll < 0.6:
                await connection.execute(
                    "DELETE FROM notes WHERE text = $1 AND id % 7 = $2", mine, rng.randrange(7)
                )
            else:
                transaction = connection.transaction()
                await transaction.start()
                await connection.execute(
                    "INSERT INTO notes (text, completed) SELECT $1, true "
                    "FROM generate_series(1, 20)",
                    mine,
                )
                await connection.execute(
                    "UPDATE notes SET completed = NOT completed WHERE text = $1", mine
                )
                await connection.execute("DELETE FROM notes WHERE text = $1 AND id % 5 = 0", mine)
                await transaction.rollback()
    finally:
        await connection.close()


async def test_the_counts_match_count_after_every_kind_of_write_at_once(
    client: httpx.AsyncClient, database_url: URL
) -> None:
    ids: list[int] = []
    await asyncio.gather(
        *(api_writer(client, seed, ids) for seed in range(6)),
        *(sql_writer(database_url, seed) for seed in range(4)),
    )
    stats = (await client.get(f"{NOTES}/stats")).json()
    assert stats == await table_counts(database_url)
    assert stats["total"] > 0


async def test_folds_keep_the_sum_while_writes_go_on(
    client: httpx.AsyncClient, database_url: URL
) -> None:
    """Folds from several workers at once, with writes between: one row after the last fold,
    and the same sum."""
    database = create_database(settings_for(database_url))
    ids: list[int] = []

    async def folds() -> None:
        for _ in range(20):
            await asyncio.gather(*(counts.fold(database=database) for _ in range(3)))
            await asyncio.sleep(0.01)

    try:
        await asyncio.gather(folds(), *(api_writer(client, seed, ids) for seed in range(10, 14)))
        assert await counts.fold(database=database)
    finally:
        await database.dispose()
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetchval("SELECT count(*) FROM note_count_deltas")
    finally:
        await connection.close()
    assert rows == 1
    assert (await client.get(f"{NOTES}/stats")).json() == await table_counts(database_url)


async def test_truncate_resets_the_counts(pg_server: URL) -> None:
    """On a database of its own: the suite's other tests keep their notes."""
    with fresh_database(pg_server) as url:
        result = migrate(url, "upgrade", "head")
        assert result.returncode == 0, result.stderr
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            sums = "SELECT sum(total)::int, sum(completed)::int FROM note_count_deltas"
            await connection.execute("INSERT INTO notes (text) VALUES ('a'), ('b')")
            assert tuple(await connection.fetchrow(sums)) == (2, 0)
            await connection.execute("TRUNCATE notes")
            assert tuple(await connection.fetchrow(sums)) == (0, 0)
            await connection.execute("INSERT INTO notes (text, completed) VALUES ('c', true)")
            assert tuple(await connection.fetchrow(sums)) == (1, 1)
        finally:
            await connection.close()
