"""The direct routes answer every request exactly as the documented routes would: the same
app with and without them gets the same requests and must give the same answers."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import URL

from service.main import create_app
from service.notes.direct import DirectRoute
from tests.apps import settings_for

NOTES = "/api/v1/notes"
# Headers that differ between any two answers: timing, and the ids of notes made per request.
VOLATILE = {"server-timing", "location", "etag", "content-length", "date"}


@pytest.fixture
async def clients(database_url: URL) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """A client of the app as it runs, and one of the same app with no direct route."""
    with_direct = create_app(settings_for(database_url))
    documented_only = create_app(settings_for(database_url))
    routes = documented_only.router.routes
    routes[:] = [route for route in routes if not isinstance(route, DirectRoute)]
    assert len(documented_only.router.routes) < len(with_direct.router.routes)
    async with LifespanManager(with_direct) as a, LifespanManager(documented_only) as b:
        yield (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=a.app), base_url="http://t"),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=b.app), base_url="http://t"),
        )


def shape(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    """What must match: the status, the stable headers, and the body without made-up ids."""
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE}
    body: Any = response.json() if response.content else None
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in {"id", "created_at", "updated_at"}}
    return response.status_code, headers, body


async def test_direct_and_documented_routes_answer_alike(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    direct, documented = clients
    note = (await direct.post(NOTES, json={"text": "both"})).json()
    etag = (await direct.get(f"{NOTES}/{note['id']}")).headers["etag"]
    json = {"content-type": "application/json"}
    requests: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("GET", f"{NOTES}/{note['id']}", {}, None),
        ("GET", f"{NOTES}/0{note['id']}", {}, None),
        ("GET", f"{NOTES}/987654321012345678", {}, None),
        ("GET", f"{NOTES}/{2**63 - 1}", {}, None),
        ("GET", f"{NOTES}/{2**63}", {}, None),
        ("POST", NOTES, json, b'{"text": "created"}'),
        ("POST", NOTES, json, b'{"text": "created", "completed": true}'),
        ("POST", NOTES, json, b'{"text": ""}'),
        ("POST", NOTES, json, b'{"text": "x", "owner": 1}'),
        ("POST", NOTES, json, b'{"text": 1e999}'),
        ("POST", NOTES, json, b'{"text": "\\ud800"}'),
        ("POST", NOTES, json, b"not json"),
        ("POST", NOTES, {"content-type": "text/plain"}, b'{"text": "plain"}'),
        ("POST", NOTES, {**json, "idempotency-key": "has space"}, b'{"text": "k"}'),
        ("PATCH", f"{NOTES}/{note['id']}", {**json, "if-match": '"0-0"'}, b'{"completed": true}'),
        ("PATCH", f"{NOTES}/987654321012345678", json, b'{"completed": true}'),
        ("PATCH", f"{NOTES}/{note['id']}", json, b'{"completed": null}'),
        ("PATCH", f"{NOTES}/{note['id']}", json, b"{}"),
    ]
    for method, url, headers, content in requests:
        mine = await direct.request(method, url, headers=headers, content=content)
        theirs = await documented.request(method, url, headers=headers, content=content)
        assert shape(mine) == shape(theirs), (method, url, content)
    # The writes that change a note, last: each route's answer would move the other's ETag.
    patched = await direct.patch(
        f"{NOTES}/{note['id']}", headers={**json, "if-match": etag}, content=b'{"text": "new"}'
    )
    assert patched.status_code == 200
    assert patched.json()["text"] == "new"
