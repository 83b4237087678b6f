"""Every input a client controls is checked before it reaches the database, and every
rejection is a 4xx with a JSON body that can be encoded: examples first, then properties."""

import base64
import json
import string
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.database.models import BIGINT_MAX, BIGINT_MIN
from service.http.errors import encodable
from service.notes.etag import etag_for, parse_if_match
from service.notes.router import decode_cursor, encode_cursor

NOTES = "/api/v1/notes"
# The statuses a client's input may earn; a 5xx for any input is a bug.
CLIENT_ERRORS = {400, 404, 412, 422}

# Property tests share the session's app and database; each example is one request or two.
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Any Unicode, lone surrogates (category Cs) included: JSON can spell them ("\ud800").
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
huge_integers = st.integers(min_value=-(2**80), max_value=2**80)
json_values = st.recursive(
    st.none() | st.booleans() | huge_integers | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)


def raw_cursor(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def assert_client_error(response: httpx.Response, *allowed: int) -> Any:
    """The response is one of `allowed` (a 4xx by default) with a JSON body; return it."""
    assert response.status_code in (allowed or CLIENT_ERRORS), (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


async def create(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post(NOTES, json={"text": "input checks"})
    assert response.status_code == 201
    return {"id": response.json()["id"], "etag": response.headers["etag"]}


# --- the inputs that once reached the driver, or a body that could not be encoded -------------


@pytest.mark.parametrize("note_id", [BIGINT_MIN - 1, BIGINT_MAX + 1, -(2**70), 2**70])
async def test_ids_outside_bigint_are_422(client: httpx.AsyncClient, note_id: int) -> None:
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        body = {"text": "x", "completed": False} if method in {"PATCH", "PUT"} else None
        response = await client.request(method, f"{NOTES}/{note_id}", json=body)
        assert assert_client_error(response, 422)["detail"][0]["loc"] == ["path", "note_id"]


async def test_ids_at_the_ends_of_bigint_are_404(client: httpx.AsyncClient) -> None:
    for note_id in (BIGINT_MIN, BIGINT_MAX):
        assert_client_error(await client.get(f"{NOTES}/{note_id}"), 404)


@pytest.mark.parametrize(
    "payload", [b"after:9223372036854775808", b"after:99999999999999999999", b"after:\xb2"]
)
async def test_cursors_beyond_bigint_are_422(client: httpx.AsyncClient, payload: bytes) -> None:
    response = await client.get(NOTES, params={"cursor": raw_cursor(payload)})
    assert assert_client_error(response, 422)["detail"][0]["loc"] == ["query", "cursor"]


@pytest.mark.parametrize("version", [str(BIGINT_MAX + 1), "9" * 40, "\u00b2", "1\u00b2", "\u0661"])
async def test_if_match_versions_no_note_can_have_are_412(
    client: httpx.AsyncClient, version: str
) -> None:
    note = await create(client)
    url = f"{NOTES}/{note['id']}"
    header = f'"{note["id"]}-{version}"'.encode()
    patched = await client.patch(url, json={"completed": True}, headers={b"If-Match": header})
    deleted = await client.delete(url, headers={b"If-Match": header})
    assert_client_error(patched, 412)
    assert_client_error(deleted, 412)
    assert (await client.get(url)).headers["etag"] == note["etag"]


async def test_a_lone_surrogate_in_text_is_422_with_an_encodable_body(
    client: httpx.AsyncClient,
) -> None:
    for body in (b'{"text": "\\ud800"}', b'{"text": "ok", "\\udfff": 1}'):
        response = await client.post(
            NOTES, content=body, headers={"content-type": "application/json"}
        )
        detail = assert_client_error(response, 422)["detail"]
        assert "\ufffd" in json.dumps(detail, ensure_ascii=False)
        response.content.decode("utf-8")  # strict: the body is valid UTF-8


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"NaN", b"Infinity"])
async def test_numbers_json_cannot_carry_are_422(client: httpx.AsyncClient, number: bytes) -> None:
    for body in (
        number,
        b'{"text": ' + number + b"}",
        b'{"text": "x", "completed": ' + number + b"}",
    ):
        response = await client.post(
            NOTES, content=body, headers={"content-type": "application/json"}
        )
        assert_client_error(response, 422)


def test_encodable_replaces_only_what_strict_json_cannot_carry() -> None:
    value = {"k\ud800": ["a\udfffb", ("é", 1, None)], "ok": "\U0001f600", "n": float("inf")}
    assert encodable(value) == {
        "k\ufffd": ["a\ufffdb", ["é", 1, None]],
        "ok": "\U0001f600",
        "n": "inf",
    }
    json.dumps(encodable(value), ensure_ascii=False, allow_nan=False).encode("utf-8")


# --- the parsers, as properties --------------------------------------------------------------


@given(st.integers(min_value=0, max_value=BIGINT_MAX))
def test_every_cursor_we_make_decodes_to_its_id(after_id: int) -> None:
    assert decode_cursor(encode_cursor(after_id)) == after_id


@given(any_text | st.binary().map(raw_cursor))
def test_a_cursor_decodes_to_an_id_in_bigint_or_is_refused(cursor: str) -> None:
    try:
        after_id = decode_cursor(cursor)
    except ValueError:
        return
    assert after_id is not None
    assert 0 <= after_id <= BIGINT_MAX
    assert decode_cursor(encode_cursor(after_id)) == after_id


@given(st.integers(min_value=BIGINT_MIN, max_value=BIGINT_MAX), any_text)
def test_if_match_names_only_versions_in_bigint(note_id: int, header: str) -> None:
    parsed = parse_if_match(header, note_id)
    assert all(0 <= version <= BIGINT_MAX for version in parsed.versions)


@given(
    st.integers(min_value=BIGINT_MIN, max_value=BIGINT_MAX),
    st.lists(st.integers(min_value=0, max_value=BIGINT_MAX), min_size=1, max_size=5),
)
def test_if_match_accepts_every_etag_we_make(note_id: int, versions: list[int]) -> None:
    header = ", ".join(etag_for(note_id, version) for version in versions)
    parsed = parse_if_match(header, note_id)
    assert parsed.versions == frozenset(versions)
    assert all(parsed.matches(version) for version in versions)


# --- the app, as properties: whatever arrives, a 2xx or a 4xx with a JSON body --------------


@PROPERTY
@given(note_id=huge_integers.map(str) | any_text.filter(bool))
@example(note_id="/")  # found by a CI run: a trailing slash, redirected
@example(note_id="é/")
async def test_any_note_id(client: httpx.AsyncClient, note_id: str) -> None:
    # Percent-encoded as a client must; "surrogatepass" spells a lone surrogate's bytes.
    quoted = quote(note_id.encode("utf-8", "surrogatepass"), safe="")
    response = await client.get(f"{NOTES}/{quoted}")
    if note_id.endswith("/") and response.status_code == 307:
        # The server decodes %2F: a path ending in "/" gets FastAPI's trailing-slash redirect,
        # to the same path without it, which is then answered like any other.
        location = unquote(urlsplit(response.headers["location"]).path, errors="surrogatepass")
        assert location == f"{NOTES}/{note_id}".rstrip("/")
        return
    if response.status_code != 200:
        assert_client_error(response, 404, 422)


@PROPERTY
@given(
    limit=st.none() | huge_integers | any_text,
    completed=st.none() | any_text,
    cursor=st.none() | any_text | st.binary().map(raw_cursor) | huge_integers.map(str),
)
async def test_any_list_query(
    client: httpx.AsyncClient, limit: int | str | None, completed: str | None, cursor: str | None
) -> None:
    params = {"limit": limit, "completed": completed, "cursor": cursor}
    query = "&".join(
        f"{name}={quote(str(value).encode('utf-8', 'surrogatepass'), safe='')}"
        for name, value in params.items()
        if value is not None
    )
    response = await client.get(f"{NOTES}?{query}")
    if response.status_code != 200:
        assert_client_error(response, 422)


@PROPERTY
@given(
    body=json_values
    | st.fixed_dictionaries({"text": any_text}, optional={"completed": json_values})
)
async def test_any_json_body_to_create(client: httpx.AsyncClient, body: object) -> None:
    # ensure_ascii spells lone surrogates as \ud800 escapes, as any JSON client may send them.
    content = json.dumps(body, ensure_ascii=True).encode()
    response = await client.post(
        NOTES, content=content, headers={"content-type": "application/json"}
    )
    if response.status_code != 201:
        assert_client_error(response, 400, 422)
        response.content.decode("utf-8")


@PROPERTY
@given(content=st.binary(max_size=200))
async def test_any_bytes_as_a_body(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(
        NOTES, content=content, headers={"content-type": "application/json"}
    )
    if response.status_code != 201:
        assert_client_error(response, 400, 422)


# Header values are bytes on the wire; these leave out only what ends a header line.
header_values = st.binary(max_size=60).filter(lambda value: not set(value) & set(b"\r\n\x00"))


@PROPERTY
@given(if_match=header_values | any_text.map(lambda text: text.encode("utf-8")), body=json_values)
async def test_any_if_match_and_body_to_patch(
    client: httpx.AsyncClient, if_match: bytes, body: object
) -> None:
    note = await create(client)
    url = f"{NOTES}/{note['id']}"
    response = await client.patch(
        url,
        content=json.dumps(body).encode(),
        headers={b"If-Match": if_match, b"content-type": b"application/json"},
    )
    if response.status_code != 200:
        assert_client_error(response, 400, 412, 422)
    deleted = await client.delete(url, headers={b"If-Match": if_match})
    if deleted.status_code != 204:
        assert_client_error(deleted, 412, 422)


@PROPERTY
@given(key=header_values | st.text(string.printable, min_size=1, max_size=300).map(str.encode))
async def test_any_idempotency_key(client: httpx.AsyncClient, key: bytes) -> None:
    response = await client.post(NOTES, json={"text": "keyed"}, headers={b"Idempotency-Key": key})
    if response.status_code != 201:
        detail = assert_client_error(response, 422)["detail"]
        assert detail[0]["loc"] == ["header", "idempotency-key"]
