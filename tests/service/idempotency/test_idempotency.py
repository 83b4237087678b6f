"""Idempotency-Key: a retry gets the first outcome and writes nothing, against a real
PostgreSQL; a key sent with another request is refused; old keys expire and are deleted."""

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import URL

from service.config import load_settings
from service.database.connections import create_database
from service.database.urls import asyncpg_dsn
from service.idempotency.service import delete_expired
from tests.apps import app_client

NOTES = "/api/v1/notes"


def new_key() -> str:
    return uuid.uuid4().hex


async def fetch(database_url: URL, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def count_notes(database_url: URL, text: str) -> int:
    rows = await fetch(database_url, "SELECT count(*) AS n FROM notes WHERE text = $1", text)
    return int(rows[0]["n"])


async def test_a_retried_post_returns_the_first_response_and_writes_once(
    client: httpx.AsyncClient, database_url: URL
) -> None:
    text, headers = f"once {new_key()}", {"Idempotency-Key": new_key()}
    first = await client.post(NOTES, json={"text": text}, headers=headers)
    retry = await client.post(NOTES, json={"text": text}, headers=headers)

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    for header in ("etag", "location", "content-type"):
        assert retry.headers[header] == first.headers[header]
    assert "idempotent-replayed" not in first.headers
    assert retry.headers["idempotent-replayed"] == "true"
    assert await count_notes(database_url, text) == 1


async def test_the_same_key_with_another_request_is_422_and_writes_nothing(
    client: httpx.AsyncClient, database_url: URL
) -> None:
    headers = {"Idempotency-Key": new_key()}
    first = await client.post(NOTES, json={"text": "first body"}, headers=headers)
    other_body = await client.post(NOTES, json={"text": f"other {new_key()}"}, headers=headers)
    other_route = await client.patch(
        f"{NOTES}/{first.json()['id']}", json={"completed": True}, headers=headers
    )

    assert first.status_code == 201
    for response in (other_body, other_route):
        assert response.status_code == 422
        error = response.json()["detail"][0]
        assert error["loc"] == ["header", "idempotency-key"]
        assert error["type"] == "idempotency_key_reused"
    note = await client.get(first.headers["location"])
    assert note.json()["completed"] is False


async def test_without_a_key_every_post_writes(
    client: httpx.AsyncClient, database_url: URL
) -> None:
    text = f"unkeyed {new_key()}"
    for _ in range(2):
        assert (await client.post(NOTES, json={"text": text})).status_code == 201
    assert await count_notes(database_url, text) == 2


async def test_concurrent_retries_of_one_key_create_one_note(database_url: URL) -> None:
    text, headers = f"race {new_key()}", {"Idempotency-Key": new_key()}
    # More requests than the pool has connections: most wait for the first one's key.
    async with app_client(database_url, db_pool_size=4) as client:
        responses = await asyncio.gather(
            *(client.post(NOTES, json={"text": text}, headers=headers) for _ in range(20))
        )
    assert [response.status_code for response in responses] == [201] * 20
    assert len({response.json()["id"] for response in responses}) == 1
    replayed = [response.headers.get("idempotent-replayed") for response in responses]
    assert replayed.count(None) == 1
    assert await count_notes(database_url, text) == 1


async def test_a_retried_patch_and_delete_replay_instead_of_412_and_404(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(NOTES, json={"text": "change me"})
    url, etag = created.headers["location"], created.headers["etag"]
    patch = {
        "json": {"completed": True},
        "headers": {"If-Match": etag, "Idempotency-Key": new_key()},
    }
    patched, patched_again = [await client.patch(url, **patch) for _ in range(2)]  # type: ignore[arg-type]
    delete = {"headers": {"If-Match": patched.headers["etag"], "Idempotency-Key": new_key()}}
    deleted, deleted_again = [await client.delete(url, **delete) for _ in range(2)]  # type: ignore[arg-type]

    assert (patched.status_code, patched_again.status_code) == (200, 200)
    assert patched_again.json() == patched.json()
    assert patched_again.headers["etag"] == patched.headers["etag"]
    assert (deleted.status_code, deleted_again.status_code) == (204, 204)
    assert deleted_again.headers["idempotent-replayed"] == "true"
    assert deleted_again.content == b""
    assert (await client.get(url)).status_code == 404


async def test_a_failed_write_keeps_no_key_so_its_retry_runs(
    client: httpx.AsyncClient, database_url: URL
) -> None:
    key = new_key()
    missing = await client.patch(
        f"{NOTES}/987654321", json={"completed": True}, headers={"Idempotency-Key": key}
    )
    assert missing.status_code == 404
    assert await fetch(database_url, "SELECT 1 FROM idempotency_keys WHERE key = $1", key) == []


async def test_keys_are_checked_before_anything_is_written(client: httpx.AsyncClient) -> None:
    for key in ("", "a" * 256, "with space", "caf\u00e9"):
        response = await client.post(
            NOTES, json={"text": "x"}, headers={b"Idempotency-Key": key.encode("latin-1")}
        )
        assert response.status_code == 422, key
        assert response.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    longest = await client.post(NOTES, json={"text": "x"}, headers={"Idempotency-Key": "k" * 255})
    assert longest.status_code == 201


async def test_an_expired_key_is_forgotten(database_url: URL) -> None:
    text, key = f"expired {new_key()}", new_key()
    async with app_client(database_url, idempotency_key_ttl=3600) as client:
        first = await client.post(NOTES, json={"text": text}, headers={"Idempotency-Key": key})
        await fetch(
            database_url,
            "UPDATE idempotency_keys SET created_at = now() - interval '2 hours' WHERE key = $1",
            key,
        )
        again = await client.post(NOTES, json={"text": text}, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in again.headers
    assert await count_notes(database_url, text) == 2


async def test_expired_keys_are_deleted_and_fresh_ones_kept(database_url: URL) -> None:
    old = [new_key() for _ in range(1500)]
    fresh = new_key()
    await fetch(
        database_url,
        "INSERT INTO idempotency_keys (key, fingerprint, status, created_at) "
        "SELECT k, '\\x00'::bytea, 201, now() - interval '3 days' FROM unnest($1::text[]) AS k "
        "UNION ALL SELECT $2, '\\x00'::bytea, 201, now()",
        old,
        fresh,
    )
    database = create_database(load_settings(database_url=database_url.render_as_string(False)))
    try:
        deleted = await delete_expired(database=database, ttl=86_400)
    finally:
        await database.dispose()
    left = {row["key"] for row in await fetch(database_url, "SELECT key FROM idempotency_keys")}
    assert deleted >= len(old)  # more than one batch, and any the other tests left
    assert not left & set(old)
    assert fresh in left


async def test_every_worker_deletes_expired_keys_in_the_background(database_url: URL) -> None:
    key = new_key()
    await fetch(
        database_url,
        "INSERT INTO idempotency_keys (key, fingerprint, status, created_at) "
        "VALUES ($1, '\\x00', 201, now() - interval '1 hour')",
        key,
    )
    async with app_client(database_url, idempotency_key_ttl=60, idempotency_cleanup_interval=0.2):
        for _ in range(50):
            if not await fetch(database_url, "SELECT 1 FROM idempotency_keys WHERE key = $1", key):
                break
            await asyncio.sleep(0.1)
    assert await fetch(database_url, "SELECT 1 FROM idempotency_keys WHERE key = $1", key) == []
