"""The stack around apps it did not write, in process: probes, lifespans, readiness, errors,
and the engines it finds without the app's help."""

import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.types import Receive, Scope, Send

from service.config import ConfigurationError, WorkerSettings
from service.stack.asgi import load_app, wrap
from service.stack.heads import alembic_revisions
from service.stack.lifespan import AppLifespan, LifespanFailedError
from tests.apps import serving

NO_MIGRATIONS = {"migrations": None}


def settings(**overrides: Any) -> WorkerSettings:
    return WorkerSettings(**{**NO_MIGRATIONS, **overrides})


async def test_a_bare_asgi_app_gets_the_probes_and_a_json_500() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan: as uvicorn's --lifespan auto, the stack runs without one
        if scope["path"] == "/boom":
            msg = "a bug"
            raise RuntimeError(msg)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    async with serving(wrap(app, settings())) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        assert (await client.post("/readyz")).status_code == 405
        metrics = await client.get("/metrics")
        assert "http_requests_total" in metrics.text
        hello = await client.get("/hello")
        assert (hello.status_code, hello.text) == (200, "hi")
        assert hello.headers["server-timing"].startswith("app;dur=")
        boom = await client.get("/boom")
        assert (boom.status_code, boom.json()) == (500, {"detail": "Internal Server Error"})


async def test_a_fastapi_apps_unexpected_error_is_json_and_its_own_handler_is_kept() -> None:
    plain = FastAPI()

    @plain.get("/boom")
    async def boom() -> None:
        msg = "a bug"
        raise RuntimeError(msg)

    async with serving(wrap(plain, settings())) as client:
        response = await client.get("/boom")
        assert (response.status_code, response.json()) == (500, {"detail": "Internal Server Error"})


async def test_the_apps_lifespan_runs_inside_the_stacks_and_its_state_reaches_requests() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("app started")
        yield {"greeting": "hello"}
        events.append("app stopped")

    app = FastAPI(lifespan=lifespan)

    @app.get("/greet")
    async def greet(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    stack = wrap(app, settings())
    assert not stack.readiness.started
    async with serving(stack) as client:
        assert events == ["app started"]
        assert stack.readiness.started
        assert (await client.get("/greet")).json() == {"greeting": "hello"}
    assert events == ["app started", "app stopped"]
    assert not stack.readiness.started


async def test_a_failing_startup_fails_the_workers_start() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        msg = "cannot start"
        raise RuntimeError(msg)
        yield

    with pytest.raises(LifespanFailedError, match="cannot start"):
        async with LifespanManager(wrap(FastAPI(lifespan=lifespan), settings())):
            pass


async def test_an_app_without_a_lifespan_is_served_as_uvicorn_serves_it() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        msg = "only http"
        raise TypeError(msg)

    lifespan = AppLifespan(app, {"type": "lifespan", "state": {}})
    await lifespan.startup()
    assert not lifespan.supported
    await lifespan.shutdown()


async def test_ready_check_decides_readiness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "readiness_of_my_app.py"
    module.write_text(
        textwrap.dedent(
            """
            healthy = True

            async def check():
                if not healthy:
                    raise RuntimeError("the cache is cold")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    stack = wrap(FastAPI(), settings(ready_check="readiness_of_my_app:check"))
    async with serving(stack) as client:
        assert (await client.get("/readyz")).status_code == 200
        sys.modules["readiness_of_my_app"].healthy = False  # type: ignore[attr-defined]
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "reason": "READY_CHECK: the cache is cold",
        }


@pytest.mark.parametrize(
    ("spec", "message"),
    [("no_colon", "expected pkg.module:callable"), ("nowhere.at_all:check", "No module")],
)
def test_a_bad_ready_check_stops_the_start(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        wrap(FastAPI(), settings(ready_check=spec))


def test_a_bad_app_stops_the_start_and_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"APP='missing\.module:app'"):
        load_app("missing.module:app", tmp_path)


def test_the_notes_alembic_heads_are_read_from_migrations() -> None:
    stack = wrap(FastAPI(), WorkerSettings())
    assert stack.readiness.revisions == alembic_revisions()
    assert stack.readiness.revisions.heads
    with pytest.raises(FileNotFoundError, match="MIGRATIONS="):
        wrap(FastAPI(), settings(migrations=Path("/nonexistent/alembic.ini")))


def test_readiness_waits_for_a_schema_behind_the_code_not_for_one_ahead() -> None:
    """A release migrates before it reloads: the old code must stay ready on the new schema
    (a revision it does not know), and new code must not serve a schema it is ahead of."""
    revisions = alembic_revisions()
    (head,) = revisions.heads
    older = sorted(revisions.known - revisions.heads)
    assert older
    assert not revisions.behind(head)
    assert not revisions.behind("0099_the_next_release")
    assert all(revisions.behind(revision) for revision in older)
    assert revisions.behind(None)


def test_engines_are_found_and_labelled_without_the_apps_help() -> None:
    stack = wrap(FastAPI(), settings())
    first = create_async_engine("postgresql+asyncpg://u@127.0.0.1:1/orders")
    second = create_async_engine("postgresql+asyncpg://u@127.0.0.1:1/orders")
    named = create_engine("postgresql+asyncpg://u@127.0.0.1:1/x", logging_name="reports")
    labels = [label for label, _ in stack.engines()]
    assert labels[-3:] == ["orders", "orders-2", "reports"]
    assert {engine for _, engine in stack.engines()} >= {
        first.sync_engine,
        second.sync_engine,
        named,
    }


async def test_readiness_asks_every_engine_and_the_schema(database_url: URL) -> None:
    """An engine that cannot connect makes the app unready; on a database at head, ready."""
    url = database_url.render_as_string(hide_password=False)
    engines: list[Any] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engines.append(create_async_engine(url))
        yield
        await engines[0].dispose()

    async with serving(wrap(FastAPI(lifespan=lifespan), WorkerSettings())) as client:
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        unreachable = create_async_engine("postgresql+asyncpg://u@127.0.0.1:9/none")
        del unreachable  # made after the startup: not the app's engine, not asked
        assert (await client.get("/readyz")).status_code == 200

    @asynccontextmanager
    async def broken(app: FastAPI) -> AsyncIterator[None]:
        engines.append(create_async_engine("postgresql+asyncpg://u@127.0.0.1:9/none"))
        yield

    stack = wrap(FastAPI(lifespan=broken), settings(ready_timeout=2))
    async with serving(stack) as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["reason"] == "database unreachable"
