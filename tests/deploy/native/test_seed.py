"""`make seed ROWS=N` on a running stack: N more notes, in batches, with progress, and the
stats counts still those of the table."""

import asyncpg
import httpx

from service.database.urls import asyncpg_dsn
from tests.stack import Stack


async def notes_in(stack: Stack) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(stack.database))
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM notes")
    finally:
        await connection.close()
    return count


async def test_seed_adds_the_rows_in_batches_and_the_counts_follow(stack: Stack) -> None:
    before = await notes_in(stack)
    result = await stack.arun("seed", "2500", "--batch", "1000")
    progress = [line for line in result.stdout.splitlines() if line.startswith("stack: seed: ")]
    assert [line.split(" notes")[0] for line in progress[:3]] == [
        "stack: seed: 1,000 / 2,500",
        "stack: seed: 2,000 / 2,500",
        "stack: seed: 2,500 / 2,500",
    ]
    assert await notes_in(stack) == before + 2500
    async with httpx.AsyncClient(base_url=stack.url) as client:
        stats = (await client.get("/api/v1/notes/stats")).json()
    assert stats["total"] == before + 2500
    assert stats["total"] == stats["completed"] + stats["open"]


def test_seed_refuses_a_count_below_one(stack: Stack) -> None:
    result = stack.run("seed", "0", check=False)
    assert result.returncode == 1
    assert "seed at least one note" in result.stderr
