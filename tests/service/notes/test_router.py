"""The notes API, endpoint by endpoint and status by status, against a real PostgreSQL."""

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

NOTES = "/api/v1/notes"
SERVER_TIMING = re.compile(r"(^|, )app;dur=\d+\.\d+$")


async def create(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    response = await client.post(NOTES, json={"text": "a note", **body})
    assert response.status_code == 201, response.text
    return response


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


async def test_create_returns_the_note_with_location_and_etag(client: httpx.AsyncClient) -> None:
    response = await create(client, text="buy milk")
    note = response.json()
    assert set(note) == {"id", "text", "completed", "created_at", "updated_at"}
    assert note["text"] == "buy milk"
    assert note["completed"] is False
    assert response.headers["location"] == f"{NOTES}/{note['id']}"
    assert re.fullmatch(r'"\d+-\d+"', response.headers["etag"])
    assert parse_time(note["created_at"]) == parse_time(note["updated_at"])
    assert abs((datetime.now(UTC) - parse_time(note["created_at"])).total_seconds()) < 60


async def test_create_keeps_completed(client: httpx.AsyncClient) -> None:
    assert (await create(client, completed=True)).json()["completed"] is True


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"text": ""},
        {"text": "   \n\t "},
        {"text": "x" * 10_001},
        {"text": "nul \x00 inside"},
        {"text": 42},
        {"text": None},
        {"text": "ok", "completed": "yes"},
        {"text": "ok", "completed": None},
        {"text": "ok", "owner": "someone"},
    ],
    ids=[
        "missing-text",
        "empty",
        "whitespace",
        "too-long",
        "nul",
        "number",
        "null",
        "string-bool",
        "null-bool",
        "unknown-field",
    ],
)
async def test_create_rejects_bad_bodies(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post(NOTES, json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert all("loc" in error and "msg" in error for error in response.json()["detail"])


async def test_create_rejects_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        NOTES, content=b'{"text": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_create_accepts_the_longest_text(client: httpx.AsyncClient) -> None:
    response = await create(client, text="é" * 10_000)
    assert len(response.json()["text"]) == 10_000


async def test_read(client: httpx.AsyncClient) -> None:
    created = await create(client, text="read me")
    response = await client.get(created.headers["location"])
    assert response.status_code == 200
    assert response.json() == created.json()
    assert response.headers["etag"] == created.headers["etag"]


async def test_read_missing_is_404_with_detail(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{NOTES}/987654321")
    assert response.status_code == 404
    assert response.json() == {"detail": "Note 987654321 not found"}


@pytest.mark.parametrize("note_id", ["abc", "1.5", str(2**63)])
async def test_read_bad_id_is_422(client: httpx.AsyncClient, note_id: str) -> None:
    assert (await client.get(f"{NOTES}/{note_id}")).status_code == 422


async def test_patch_changes_only_given_fields(client: httpx.AsyncClient) -> None:
    created = await create(client, text="before")
    note_id = created.json()["id"]
    response = await client.patch(f"{NOTES}/{note_id}", json={"completed": True})
    assert response.status_code == 200
    note = response.json()
    assert note["text"] == "before"
    assert note["completed"] is True
    assert note["created_at"] == created.json()["created_at"]
    assert parse_time(note["updated_at"]) > parse_time(created.json()["updated_at"])
    assert response.headers["etag"] != created.headers["etag"]
    assert (await client.get(f"{NOTES}/{note_id}")).json() == note


async def test_patch_with_current_etag(client: httpx.AsyncClient) -> None:
    created = await create(client)
    url = created.headers["location"]
    response = await client.patch(
        url, json={"text": "after"}, headers={"If-Match": created.headers["etag"]}
    )
    assert response.status_code == 200
    assert response.json()["text"] == "after"


@pytest.mark.parametrize(
    "if_match",
    ['"{id}-999"', 'W/"{id}-1"', '"0-1"', "garbage"],
    ids=["old-version", "weak", "other-note", "garbage"],
)
async def test_patch_with_stale_etag_is_412_and_changes_nothing(
    client: httpx.AsyncClient, if_match: str
) -> None:
    created = await create(client, text="keep")
    url = created.headers["location"]
    header = if_match.format(id=created.json()["id"])
    response = await client.patch(url, json={"text": "lost"}, headers={"If-Match": header})
    assert response.status_code == 412
    assert "detail" in response.json()
    after = await client.get(url)
    assert after.json() == created.json()
    assert after.headers["etag"] == created.headers["etag"]


async def test_if_match_star_and_lists(client: httpx.AsyncClient) -> None:
    created = await create(client)
    url, etag = created.headers["location"], created.headers["etag"]
    star = await client.patch(url, json={"completed": True}, headers={"If-Match": "*"})
    assert star.status_code == 200
    listed = await client.patch(
        url, json={"completed": False}, headers={"If-Match": f'"x", {star.headers["etag"]}'}
    )
    assert listed.status_code == 200
    assert (await client.patch(url, json={}, headers={"If-Match": etag})).status_code == 412


async def test_empty_patch_returns_the_note_unchanged(client: httpx.AsyncClient) -> None:
    created = await create(client)
    response = await client.patch(created.headers["location"], json={})
    assert response.status_code == 200
    assert response.json() == created.json()
    assert response.headers["etag"] == created.headers["etag"]


@pytest.mark.parametrize(
    "body", [{"text": None}, {"completed": None}, {"text": " "}, {"extra": 1}, {"completed": 1}]
)
async def test_patch_rejects_bad_bodies(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    created = await create(client)
    response = await client.patch(created.headers["location"], json=body)
    assert response.status_code == 422


async def test_patch_missing_is_404(client: httpx.AsyncClient) -> None:
    response = await client.patch(f"{NOTES}/987654321", json={"completed": True})
    assert response.status_code == 404
    assert response.json() == {"detail": "Note 987654321 not found"}
    with_etag = await client.patch(
        f"{NOTES}/987654321", json={"completed": True}, headers={"If-Match": '"987654321-1"'}
    )
    assert with_etag.status_code == 404


async def test_put_replaces_every_field(client: httpx.AsyncClient) -> None:
    created = await create(client, text="old", completed=True)
    response = await client.put(
        created.headers["location"],
        json={"text": "new", "completed": False},
        headers={"If-Match": created.headers["etag"]},
    )
    assert response.status_code == 200
    assert response.json()["text"] == "new"
    assert response.json()["completed"] is False
    assert response.headers["etag"] != created.headers["etag"]


async def test_put_needs_both_fields_and_a_fresh_etag(client: httpx.AsyncClient) -> None:
    created = await create(client)
    url = created.headers["location"]
    assert (await client.put(url, json={"text": "only"})).status_code == 422
    assert (await client.put(url, json={"completed": True})).status_code == 422
    stale = await client.put(
        url, json={"text": "x", "completed": True}, headers={"If-Match": '"1-999999"'}
    )
    assert stale.status_code == 412
    missing = await client.put(f"{NOTES}/987654321", json={"text": "x", "completed": True})
    assert missing.status_code == 404


async def test_delete(client: httpx.AsyncClient) -> None:
    created = await create(client)
    url = created.headers["location"]
    response = await client.delete(url)
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(url)).status_code == 404
    assert (await client.delete(url)).status_code == 404


async def test_delete_honours_if_match(client: httpx.AsyncClient) -> None:
    created = await create(client)
    url = created.headers["location"]
    assert (await client.delete(url, headers={"If-Match": '"0-0"'})).status_code == 412
    assert (await client.get(url)).status_code == 200
    assert (
        await client.delete(url, headers={"If-Match": created.headers["etag"]})
    ).status_code == 204


async def test_list_first_page_shape(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await create(client)
    response = await client.get(NOTES, params={"limit": 2})
    assert response.status_code == 200
    page = response.json()
    assert set(page) == {"items", "next_cursor"}
    assert len(page["items"]) == 2
    assert page["items"][0]["id"] < page["items"][1]["id"]
    assert isinstance(page["next_cursor"], str)


async def test_list_default_limit_is_20(client: httpx.AsyncClient) -> None:
    for _ in range(21):
        await create(client)
    assert len((await client.get(NOTES)).json()["items"]) == 20


async def test_list_filters_by_completed(client: httpx.AsyncClient) -> None:
    done = (await create(client, completed=True)).json()["id"]
    todo = (await create(client, completed=False)).json()["id"]
    completed = await walk(client, {"completed": "true"})
    open_ = await walk(client, {"completed": "false"})
    assert done in completed
    assert todo not in completed
    assert todo in open_
    assert done not in open_


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"completed": "maybe"},
        {"cursor": "not-a-cursor"},
        {"cursor": "YWZ0ZXI6LTE"},  # "after:-1"
        {"cursor": ""},
    ],
)
async def test_list_rejects_bad_parameters(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await client.get(NOTES, params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


async def walk(client: httpx.AsyncClient, params: dict[str, Any]) -> list[int]:
    ids: list[int] = []
    cursor: dict[str, str] = {}
    while True:
        page = (await client.get(NOTES, params={**params, "limit": 50, **cursor})).json()
        ids.extend(item["id"] for item in page["items"])
        if page["next_cursor"] is None:
            return ids
        cursor = {"cursor": page["next_cursor"]}


async def test_stats_counts_by_state(client: httpx.AsyncClient) -> None:
    before = (await client.get(f"{NOTES}/stats")).json()
    await create(client, completed=True)
    await create(client)
    await create(client)
    response = await client.get(f"{NOTES}/stats")
    assert response.status_code == 200
    after = response.json()
    assert after == {
        "total": before["total"] + 3,
        "completed": before["completed"] + 1,
        "open": before["open"] + 2,
    }
    timing = response.headers["server-timing"]
    assert re.match(r"db;dur=\d+\.\d+, app;dur=", timing)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", NOTES),
        ("GET", f"{NOTES}/stats"),
        ("GET", f"{NOTES}/987654321"),
        ("POST", NOTES),
        ("GET", "/healthz"),
        ("GET", "/no/such/path"),
    ],
)
async def test_every_response_has_server_timing(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, json={"text": "t"} if method == "POST" else None)
    assert SERVER_TIMING.search(response.headers["server-timing"])


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_migrated(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_openapi_lists_every_status_each_operation_answers(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    expected = {
        ("post", NOTES): {"201", "400", "413", "422", "503"},
        ("get", NOTES): {"200", "422", "503"},
        ("get", f"{NOTES}/stats"): {"200", "503"},
        ("get", f"{NOTES}/{{note_id}}"): {"200", "404", "422", "503"},
        ("patch", f"{NOTES}/{{note_id}}"): {"200", "400", "404", "412", "413", "422", "503"},
        ("put", f"{NOTES}/{{note_id}}"): {"200", "400", "404", "412", "413", "422", "503"},
        ("delete", f"{NOTES}/{{note_id}}"): {"204", "404", "412", "422", "503"},
    }
    for (method, path), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert set(responses) == statuses, (method, path)
        assert "Retry-After" in responses["503"]["headers"]
    writes = [("post", NOTES)] + [(m, f"{NOTES}/{{note_id}}") for m in ("patch", "put", "delete")]
    for method, path in writes:
        parameters = {parameter["name"] for parameter in paths[path][method]["parameters"]}
        assert "idempotency-key" in parameters, (method, path)
