"""The app's factory: it refuses bad settings, builds nothing that connects, and each worker
process it runs in has its own pool."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from deploy.native.processes import free_port
from service.config import ConfigurationError, get_settings
from service.database.urls import asyncpg_dsn
from service.main import create_app
from tests.postgres import ROOT


def service_env(url: URL | str, **extra: str) -> dict[str, str]:
    database_url = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    return {**os.environ, "DATABASE_URL": database_url, "ENVIRONMENT": "test", **extra}


@contextmanager
def uvicorn_processes(url: URL, count: int) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    """`count` uvicorn processes of the app, started together; each with its base URL."""
    started = []
    for _ in range(count):
        port = free_port()
        argv = [
            "-m",
            "uvicorn",
            "--factory",
            "service.stack.asgi:create_stack",
            "--port",
            str(port),
        ]
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=service_env(url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append((process, f"http://127.0.0.1:{port}"))
    try:
        deadline = time.monotonic() + 30
        for process, base in started:
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, "uvicorn exited during start"
                assert time.monotonic() < deadline, "uvicorn never became ready"
                time.sleep(0.1)
        yield started
    finally:
        for process, _ in started:
            process.terminate()
        for process, _ in started:
            process.wait(timeout=30)


def test_two_processes_each_open_their_own_pool(database_url: URL) -> None:
    with uvicorn_processes(database_url, 2) as [(first, first_url), (second, second_url)]:
        created = httpx.post(f"{first_url}/api/v1/notes", json={"text": "across processes"})
        assert created.status_code == 201
        read = httpx.get(f"{second_url}{created.headers['location']}")
        assert read.status_code == 200
        assert read.json() == created.json()
        # Load both pools past one connection so each holds several of its own.
        with httpx.Client() as client:
            for base in (first_url, second_url):
                for _ in range(3):
                    assert client.get(f"{base}/api/v1/notes/stats").status_code == 200

        async def holders() -> dict[str, int]:
            connection = await asyncpg.connect(asyncpg_dsn(database_url))
            try:
                rows = await connection.fetch(
                    "SELECT application_name, count(*) AS n FROM pg_stat_activity "
                    "WHERE datname = current_database() "
                    "AND application_name LIKE 'notes:%' GROUP BY 1"
                )
                return {row["application_name"]: row["n"] for row in rows}
            finally:
                await connection.close()

        pools = asyncio.run(holders())
    assert pools.get(f"notes:{first.pid}", 0) >= 1, pools
    assert pools.get(f"notes:{second.pid}", 0) >= 1, pools


@dataclass(frozen=True)
class FreshProcess:
    """What one new Python process printed, and whether it connected to the database."""

    result: subprocess.CompletedProcess[str]
    connected: bool

    def lines(self) -> list[str]:
        assert self.result.returncode == 0, self.result.stderr
        return [line for line in self.result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fresh_process() -> Iterator[FreshProcess]:
    """One new process (one interpreter start for the two tests that read it): it imports the
    app, creates it and its database, then logs in both formats; a listener that counts
    connections stands in for the database."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        script = (
            "import logging, structlog\n"
            "from service.main import create_app\n"
            "from service.stack.asgi import wrap\n"
            "from service.database.connections import create_database\n"
            "from service.config import get_settings, load_settings\n"
            "wrap(create_app())\n"
            "create_database(get_settings())\n"
            "print('imported')\n"
            "for log_format in ('json', 'console'):\n"
            "    settings = load_settings(log_format=log_format)\n"
            "    wrap(create_app(settings), settings)\n"
            "    structlog.get_logger(f'service.{log_format}').info('hello', answer=42)\n"
            "    logging.getLogger('uvicorn.error').warning('from the standard library')\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=service_env(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/notes"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        # The kernel completes a loopback connect before connect() returns, whether or not
        # anyone accepts: a connection the process made is queued here now, no wait needed.
        listener.setblocking(False)
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            yield FreshProcess(result, connected=False)
        else:
            yield FreshProcess(result, connected=True)


def test_import_and_app_creation_open_no_connection(fresh_process: FreshProcess) -> None:
    assert fresh_process.lines()[0] == "imported"
    assert not fresh_process.connected


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The process environment, to change for one test; the settings are read afresh."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DB_POOL_SIZE", "lots"),
        ("DB_POOL_TIMEOUT", "-1"),
        ("REQUEST_TIMEOUT", "60"),
        ("LOG_FORMAT", "xml"),
        ("DATABASE_URL", "mysql://user:hunter2@db/notes"),
    ],
)
def test_a_bad_setting_stops_the_start_and_names_the_variable(
    environment: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    environment.setenv(variable, value)
    with pytest.raises(ConfigurationError) as error:
        create_app()
    assert variable in str(error.value)
    assert "hunter2" not in str(error.value)


def test_production_refuses_the_default_database_url(environment: pytest.MonkeyPatch) -> None:
    environment.delenv("DATABASE_URL", raising=False)
    environment.setenv("ENVIRONMENT", "production")
    with pytest.raises(ConfigurationError, match="DATABASE_URL must be set explicitly"):
        create_app()


@pytest.mark.parametrize("password", ["change-me", "CHANGEME", "postgres"])
def test_production_refuses_a_placeholder_password(
    environment: pytest.MonkeyPatch, password: str
) -> None:
    environment.setenv("DATABASE_URL", f"postgresql+asyncpg://notes:{password}@db:5432/notes")
    environment.setenv("ENVIRONMENT", "production")
    with pytest.raises(ConfigurationError, match="placeholder"):
        create_app()


def test_log_format_json_for_machines_console_for_people(fresh_process: FreshProcess) -> None:
    """In a process of its own: logging is configured once per process, as in a worker."""
    lines = fresh_process.lines()[1:]
    assert len(lines) == 4
    first, second = (json.loads(line) for line in lines[:2])
    assert first["event"] == "hello"
    assert first["answer"] == 42
    assert first["logger"] == "service.json"
    assert second["logger"] == "uvicorn.error"
    assert second["level"] == "warning"
    console = lines[2:]
    assert all(not line.startswith("{") for line in console)
    assert "hello" in console[0]
    assert "answer" in console[0]
    assert "from the standard library" in console[1]
