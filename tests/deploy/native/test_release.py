"""`make release` under load, on a million notes, for an app served with APP= and MIGRATIONS=:
the next release's expand step (a column with a default, an index built concurrently), then
a reload to code that reads and writes the column. Nothing fails, /readyz stays true, and
when the migration cannot get its lock the release stops before the reload."""

import asyncio
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from service.database.urls import asyncpg_dsn
from tests.next_release import REVISION, Checkout, schema
from tests.postgres import ROOT, fresh_database
from tests.stack import Stack, TimedLoad, background_load, running_stack

NOTES = 1_000_000
PREVIOUS = "0003_count_notes_as_written"
# Enough clients to keep both workers busy, few enough that the in-process client is not
# what the durations measure.
CLIENTS = 8


@pytest.fixture(scope="module")
def released(pg_server: URL) -> Iterator[tuple[Stack, Checkout]]:
    """Today's notes service served from a checkout, on a million notes; then the next release
    checked out over it, which the running workers have not loaded."""
    # Not under pytest's tmp dir, which is private to root: the workers' account reads it.
    root = Path(tempfile.mkdtemp(prefix="notes-release-"))
    root.chmod(0o755)
    checkout = Checkout.current(root / "app")
    try:
        with (
            fresh_database(pg_server) as url,
            running_stack(url, workers=2, extra_env=checkout.env()) as stack,
        ):
            stack.run("seed", str(NOTES))
            checkout.next_release()
            yield stack, checkout
    finally:
        shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def readiness_watched(url: str) -> AsyncIterator[Counter[int | str]]:
    """/readyz through nginx every 50 ms while the block runs: each answer counted."""
    answers: Counter[int | str] = Counter()
    done = asyncio.Event()

    async def watch() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not done.is_set():
                try:
                    answers[(await client.get(f"{url}/readyz")).status_code] += 1
                except httpx.HTTPError as exc:
                    answers[type(exc).__name__] += 1
                await asyncio.sleep(0.05)

    task = asyncio.create_task(watch())
    try:
        yield answers
    finally:
        done.set()
        await task


def with_env(stack: Stack, **env: str) -> Stack:
    return dataclasses.replace(stack, env={**stack.env, **env})


async def test_a_release_whose_migration_cannot_get_its_lock_stops_before_the_reload(
    released: tuple[Stack, Checkout],
) -> None:
    stack, _ = released
    master = stack.master_pid()
    holder = await asyncpg.connect(asyncpg_dsn(stack.database))
    async with (
        readiness_watched(stack.url) as ready,
        background_load(stack.url, concurrency=CLIENTS, make=TimedLoad) as load,
    ):
        assert isinstance(load, TimedLoad)
        await asyncio.sleep(3)  # a steady window before the release
        # A long transaction that read notes: the ALTER TABLE can never have the table.
        transaction = holder.transaction()
        await transaction.start()
        await holder.fetchval("SELECT count(*) FROM notes WHERE id = 1")
        started = time.time()
        result = await with_env(stack, MIGRATION_LOCK_TIMEOUT="0.5", MIGRATION_ATTEMPTS="3").arun(
            "release", check=False
        )
        ended = time.time()
        await transaction.rollback()
    await holder.close()

    assert result.returncode == 1, result.stdout + result.stderr
    assert "gave up after 3 attempts" in result.stderr
    assert "release stopped before the reload: the running code keeps serving" in result.stderr
    assert stack.master_pid() == master
    assert await schema(stack.database) == (PREVIOUS, False, None)
    async with httpx.AsyncClient(base_url=stack.url) as client:
        assert (await client.get("/api/v1/notes/1/priority")).status_code == 404
    assert not load.result.unexpected(), load.result.counts()
    assert not load.result.retries, load.result.retries
    assert set(ready) == {200}, ready
    before, during = load.p99(load.spans[0][1], started), load.p99(started, ended)
    print(
        f"\nrelease gave up after {ended - started:.1f}s, {load.result.counts()}; p99 before "
        f"{before * 1000:.0f} ms, during {during * 1000:.0f} ms; /readyz {ready}\n{result.stderr}"
    )


async def test_a_release_under_load_fails_nothing_and_serves_the_new_column(
    released: tuple[Stack, Checkout],
) -> None:
    stack, _ = released
    master = stack.master_pid()
    async with (
        readiness_watched(stack.url) as ready,
        background_load(stack.url, concurrency=CLIENTS, make=TimedLoad) as load,
    ):
        assert isinstance(load, TimedLoad)
        await asyncio.sleep(3)  # a steady window before the release
        started = time.time()
        result = await stack.arun("release")
        ended = time.time()
        await asyncio.sleep(1)
    assert result.returncode == 0
    assert stack.master_pid() != master
    assert await schema(stack.database) == (REVISION, True, True)
    assert not load.result.unexpected(), load.result.counts()
    assert not load.result.retries, load.result.retries
    assert set(ready) == {200}, ready
    before = load.p99(load.spans[0][1], started)
    during = load.p99(started, ended)
    lines = [line for line in result.stdout.splitlines() if line.startswith("stack: ")]
    print(
        f"\nrelease on {NOTES} notes: {ended - started:.1f}s, {load.result.counts()}; "
        f"p99 before {before * 1000:.0f} ms, during {during * 1000:.0f} ms "
        f"({during / before:.1f}x); /readyz {ready}\n" + "\n".join(lines)
    )

    # The new code reads and writes the column; a note the old code wrote has its default.
    note = load.note_ids[-1]
    async with httpx.AsyncClient(base_url=stack.url) as client:
        assert (await client.get(f"/api/v1/notes/{note}/priority")).json() == {"priority": 0}
        written = await client.put(f"/api/v1/notes/{note}/priority", json={"priority": 7})
        assert written.status_code == 200
        assert (await client.get(f"/api/v1/notes/{note}/priority")).json() == {"priority": 7}
        assert (
            await client.put("/api/v1/notes/1/priority", json={"priority": 10})
        ).status_code == 422
        assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    ("role", "refusal"),
    [
        ("app", "make migrate on the database host, then make reload on each app host"),
        ("proxy", "make migrate on the database host, then make reload on each app host"),
        ("all", "gunicorn is not running: make up first"),
    ],
)
def test_release_refuses_where_it_cannot_run_both_steps(
    tmp_path: Path, role: str, refusal: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.native", "release"],
        cwd=ROOT,
        env={**os.environ, "RUN_DIR": str(tmp_path), "STACK_ROLE": role},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert refusal in result.stderr
