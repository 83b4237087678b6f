"""What many clients at once must not break: pagination walks, ETags, concurrent stats."""

import asyncio
import time

import asyncpg
import httpx
from sqlalchemy.engine import URL

from service.database.urls import asyncpg_dsn
from tests.apps import app_client
from tests.postgres import locked_table

NOTES = "/api/v1/notes"


async def test_walk_sees_every_row_once_while_rows_are_inserted(
    client: httpx.AsyncClient,
) -> None:
    existing = set()
    for index in range(60):
        response = await client.post(NOTES, json={"text": f"walk {index}"})
        existing.add(response.json()["id"])

    inserted: list[int] = []
    seen: list[int] = []
    cursor: dict[str, str] = {}
    while True:
        # A writer adds notes between every page the reader fetches.
        for _ in range(3):
            inserted.append((await client.post(NOTES, json={"text": "late"})).json()["id"])
        page = (await client.get(NOTES, params={"limit": 7, **cursor})).json()
        seen.extend(item["id"] for item in page["items"])
        if page["next_cursor"] is None:
            break
        cursor = {"cursor": page["next_cursor"]}

    assert len(seen) == len(set(seen)), "a row was returned twice"
    assert seen == sorted(seen)
    assert existing <= set(seen), "a row that existed before the walk was skipped"
    # Rows inserted before the last page was read land behind the cursor and are seen too.
    assert set(inserted[:-3]) <= set(seen)


async def test_concurrent_patches_with_one_etag_give_one_winner(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(NOTES, json={"text": "contended"})
    url, etag = created.headers["location"], created.headers["etag"]

    responses = await asyncio.gather(
        *(
            client.patch(url, json={"text": f"writer {n}"}, headers={"If-Match": etag})
            for n in range(10)
        )
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [412] * 9
    winner = next(response for response in responses if response.status_code == 200)
    final = await client.get(url)
    assert final.json()["text"] == winner.json()["text"]
    assert final.headers["etag"] == winner.headers["etag"]


async def test_concurrent_deletes_with_one_etag_give_one_winner(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(NOTES, json={"text": "deleted once"})
    url, etag = created.headers["location"], created.headers["etag"]
    responses = await asyncio.gather(
        *(client.delete(url, headers={"If-Match": etag}) for _ in range(6))
    )
    statuses = sorted(response.status_code for response in responses)
    # The losers find the note gone: 404, never a second 204.
    assert statuses.count(204) == 1
    assert set(statuses) <= {204, 404, 412}


async def test_stats_agree_with_the_table_while_notes_change_state(
    client: httpx.AsyncClient, database_url: URL
) -> None:
    """Notes flip between completed and open while stats are read: a note must be counted
    exactly once, so every total equals the number of rows (counts taken at two moments,
    as two statements, would count a note that moved in between twice or not at all)."""
    ids = [(await client.post(NOTES, json={"text": "flips"})).json()["id"] for _ in range(20)]
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetchval("SELECT count(*) FROM notes")
    finally:
        await connection.close()
    stop = asyncio.Event()

    async def flip() -> None:
        state = True
        while not stop.is_set():
            for note_id in ids:
                await client.patch(f"{NOTES}/{note_id}", json={"completed": state})
            state = not state

    flipper = asyncio.create_task(flip())
    totals = []
    for _ in range(60):
        stats = (await client.get(f"{NOTES}/stats")).json()
        assert stats["total"] == stats["completed"] + stats["open"]
        totals.append(stats["total"])
    stop.set()
    await flipper
    assert set(totals) == {rows}


async def test_many_concurrent_stats_on_a_small_pool_never_deadlock(database_url: URL) -> None:
    """More stats requests than connections: each waits for one connection, in turn."""
    async with app_client(database_url, db_pool_size=2, db_pool_timeout=5.0) as small:
        responses = await asyncio.gather(*(small.get(f"{NOTES}/stats") for _ in range(20)))
    assert [response.status_code for response in responses] == [200] * 20


async def test_a_full_pool_gives_503_after_the_pool_timeout(database_url: URL) -> None:
    async with app_client(database_url, db_pool_size=1, db_pool_timeout=0.5) as small:
        async with locked_table(database_url):
            holder = asyncio.create_task(small.get(f"{NOTES}/1"))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            waiter = await small.get(f"{NOTES}/2")
            waited = time.monotonic() - started
        held = await holder
    assert waiter.status_code == 503
    assert waiter.json() == {"detail": "Database unavailable"}
    assert 0.4 < waited < 3
    assert held.status_code in {200, 404}
