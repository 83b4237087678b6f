"""The precompiled route class: the notes API has one route per path and method, and its
precompiled handlers answer as FastAPI's own would, honouring every dependency and override."""

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import fastapi.routing
import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from sqlalchemy.engine import URL

from service.database.connections import create_database, get_database
from service.database.urls import asyncpg_dsn
from service.http import precompiled
from service.main import create_app
from service.notes.router import router as notes_router
from tests.apps import serving, settings_for
from tests.postgres import fresh_database, migrate

NOTES = "/api/v1/notes"
OPENAPI = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
# What the guarding dependencies let in.
ADMITTED = "let-me-in"
# Headers that differ between any two answers: timing, and the ids of notes made per request.
VOLATILE = {"server-timing", "location", "etag", "content-length", "date"}


def test_every_path_and_method_has_exactly_one_route() -> None:
    app = create_app()
    routes = Counter(
        (context.path, method)
        for context in fastapi.routing.iter_route_contexts(app.routes)
        for method in context.methods or ()
    )
    assert routes[(f"{NOTES}/{{note_id}}", "GET")] == 1
    assert {key: n for key, n in routes.items() if n > 1} == {}


def test_the_openapi_document_is_the_published_one() -> None:
    """docs/openapi.json is the API's contract: the route class changes nothing in it.
    After a deliberate change to the API: `uv run python -m tests.service.http.test_precompiled`.
    """
    assert create_app().openapi() == json.loads(OPENAPI.read_text())


@pytest.fixture
def served_by_plan(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each request a precompiled handler looks at: whether its plan served it (True) or
    it went to FastAPI's handler (False)."""
    outcomes: list[bool] = []
    values = precompiled._Plan.values

    async def recorded(plan: precompiled._Plan, request: Request) -> dict[str, Any] | None:
        result = await values(plan, request)
        outcomes.append(result is not None)
        return result

    monkeypatch.setattr(precompiled._Plan, "values", recorded)
    return outcomes


def shape(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    """What must match: the status, the stable headers, and the body without made-up ids."""
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE}
    body: Any = response.json() if response.content else None
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in {"id", "created_at", "updated_at"}}
    return response.status_code, headers, body


async def test_precompiled_and_fastapi_handlers_answer_alike(
    database_url: URL, served_by_plan: list[bool]
) -> None:
    precompiled_app = create_app(settings_for(database_url))
    # Any override sends every request of the app to FastAPI's own handlers.
    fastapi_app = create_app(settings_for(database_url))
    fastapi_app.dependency_overrides[shape] = shape
    async with serving(precompiled_app) as fast, serving(fastapi_app) as plain:
        note = (await fast.post(NOTES, json={"text": "both"})).json()
        url = f"{NOTES}/{note['id']}"
        etag = (await fast.get(url)).headers["etag"]
        json_type = {"content-type": "application/json"}
        # (method, target, headers, body, whether the precompiled plan serves it itself)
        requests: list[tuple[str, str, dict[str, str], bytes | None, bool]] = [
            ("GET", url, {}, None, True),
            ("GET", f"{NOTES}/0{note['id']}", {}, None, True),
            ("GET", f"{NOTES}/987654321012345678", {}, None, True),
            ("GET", f"{NOTES}/{2**63 - 1}", {}, None, True),
            ("GET", f"{NOTES}/{2**63}", {}, None, False),
            ("GET", f"{NOTES}/-1", {}, None, True),
            ("GET", f"{NOTES}/1e3", {}, None, False),
            ("GET", f"{NOTES}?limit=2&completed=false", {}, None, True),
            ("GET", f"{NOTES}?limit=0", {}, None, False),
            ("GET", f"{NOTES}?completed=maybe", {}, None, False),
            ("GET", f"{NOTES}?cursor=bogus", {}, None, False),
            ("GET", f"{NOTES}/stats", {}, None, True),
            ("POST", NOTES, json_type, b'{"text": "created"}', True),
            ("POST", NOTES, json_type, b'{"text": "created", "completed": true}', True),
            ("POST", NOTES, json_type, b'{"text": ""}', False),
            ("POST", NOTES, json_type, b'{"text": "x", "owner": 1}', False),
            ("POST", NOTES, json_type, b'{"text": 1e999}', False),
            ("POST", NOTES, json_type, b'{"text": "\\ud800"}', False),
            ("POST", NOTES, json_type, b"not json", False),
            ("POST", NOTES, json_type, b"", False),
            ("POST", NOTES, {"content-type": "text/plain"}, b'{"text": "plain"}', False),
            ("POST", NOTES, {"content-type": "application/json; charset=utf-8"}, b"{}", False),
            ("POST", NOTES, {**json_type, "idempotency-key": "has space"}, b"{}", False),
            ("PATCH", url, {**json_type, "if-match": '"0-0"'}, b'{"completed": true}', True),
            ("PATCH", f"{NOTES}/987654321012345678", json_type, b'{"completed": true}', True),
            ("PATCH", url, json_type, b'{"completed": null}', False),
            ("PATCH", url, json_type, b"{}", True),
            (
                "PUT",
                url,
                {**json_type, "if-match": '"0-0"'},
                b'{"text": "t", "completed": true}',
                True,
            ),
            ("PUT", url, json_type, b'{"text": "t"}', False),
            ("DELETE", f"{NOTES}/987654321012345678", {}, None, True),
            ("DELETE", url, {"if-match": '"0-0"'}, None, True),
        ]
        for method, target, headers, content, _ in requests:
            mine = await fast.request(method, target, headers=headers, content=content)
            theirs = await plain.request(method, target, headers=headers, content=content)
            assert shape(mine) == shape(theirs), (method, target, content)
        # The writes that change the note, last: each answer would move the other's ETag.
        patched = await fast.patch(
            url, headers={**json_type, "if-match": etag}, content=b'{"text": "new"}'
        )
        assert patched.status_code == 200
    # The precompiled app served the valid requests itself and handed the rest to FastAPI
    # (which answered alike); the app with an override never consulted a plan.
    assert served_by_plan == [True, True, *(plan for *_, plan in requests), True]


async def _reject(request: Request) -> None:
    """A dependency of the request alone (what a precompiled handler runs itself)."""
    if request.headers.get("authorization") != f"Bearer {ADMITTED}":
        raise HTTPException(status_code=401, detail="who are you?")


async def _require_token(x_token: Annotated[str | None, Header()] = None) -> None:
    """A dependency with a parameter of its own (what only FastAPI's handler solves)."""
    if x_token != ADMITTED:
        raise HTTPException(status_code=401, detail="who are you?")


def guarded_app(database_url: URL, dependency: Callable[..., Any]) -> FastAPI:
    """The app with the notes router included once more, first, behind `dependency`."""
    app = create_app(settings_for(database_url))
    app.include_router(notes_router, dependencies=[Depends(dependency)])
    app.router.routes.insert(0, app.router.routes.pop())
    return app


@pytest.mark.parametrize(
    ("dependency", "credentials"),
    [(_reject, {"authorization": f"Bearer {ADMITTED}"}), (_require_token, {"x-token": ADMITTED})],
    ids=["request-only", "with-a-header-parameter"],
)
async def test_a_dependency_added_to_the_router_guards_every_route(
    database_url: URL, dependency: Callable[..., Any], credentials: dict[str, str]
) -> None:
    async with serving(guarded_app(database_url, dependency)) as client:
        created = await client.post(NOTES, json={"text": "guarded"}, headers=credentials)
        assert created.status_code == 201, created.text
        url = created.headers["location"]
        attempts = [
            ("GET", url, None),
            ("GET", NOTES, None),
            ("GET", f"{NOTES}/stats", None),
            ("POST", NOTES, {"text": "sneaky"}),
            ("PATCH", url, {"completed": True}),
            ("PUT", url, {"text": "sneaky", "completed": True}),
            ("DELETE", url, None),
        ]
        for method, target, body in attempts:
            refused = await client.request(method, target, json=body)
            assert refused.status_code == 401, (method, target, refused.text)
            assert refused.json() == {"detail": "who are you?"}
        for method, target, body in attempts:
            allowed = await client.request(method, target, json=body, headers=credentials)
            assert allowed.status_code < 300, (method, target, allowed.text)


@pytest.fixture(scope="module")
def second_database(pg_server: URL) -> Iterator[URL]:
    """Another migrated database, for an override to point the app at."""
    with fresh_database(pg_server, prefix="notes_override") as url:
        assert migrate(url, "upgrade", "head").returncode == 0
        yield url


async def test_an_override_replaces_the_database_for_every_route(
    database_url: URL, second_database: URL
) -> None:
    text = f"elsewhere {uuid.uuid4()}"
    app = create_app(settings_for(database_url))
    other = create_database(settings_for(second_database))
    app.dependency_overrides[get_database] = lambda: other
    try:
        async with serving(app) as client:
            created = await client.post(NOTES, json={"text": text})
            assert created.status_code == 201
            url = created.headers["location"]
            assert (await client.patch(url, json={"completed": True})).status_code == 200
            assert (await client.get(url)).json()["completed"] is True
            listed = (await client.get(f"{NOTES}?completed=true&limit=100")).json()["items"]
            assert [note["text"] for note in listed] == [text]
            assert (await client.get(f"{NOTES}/stats")).json()["completed"] == 1
    finally:
        await other.dispose()
    assert await notes_with(second_database, text) == [(text, True)]
    assert await notes_with(database_url, text) == []


async def notes_with(url: URL, text: str) -> list[tuple[str, bool]]:
    """The notes of the database at `url` with this text: (text, completed)."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await connection.fetch("SELECT text, completed FROM notes WHERE text = $1", text)
    finally:
        await connection.close()
    return [(row["text"], row["completed"]) for row in rows]


if __name__ == "__main__":
    OPENAPI.write_text(json.dumps(create_app().openapi(), indent=2) + "\n")
