"""docker-compose.yml run for real: `python -m deploy.compose.cli`, what `make up ENGINE=docker`
runs, with the Compose this machine has (Debian's docker-compose 1.29 here) and the local
stand-ins of PostgreSQL and nginx (deploy/compose/standins.yml), since no registry answers.
prometheus, nginx-exporter and grafana have no stand-in and are not started: their
configuration is checked by tests/deploy/test_containers.py.

One project for the module: db (its first start runs deploy/postgres/init-app-role.sh),
migrate, two app containers (`--scale app=2`: nginx's upstream `app` resolves to both) and
nginx rendering the repository's nginx.conf with Compose's own start script, its public port
on loopback. The tests reach nginx there and the containers at their network addresses, which
the host routes to. `down --volumes` ends it, and nothing of the project may be left.
"""

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from dotenv import dotenv_values
from sqlalchemy.engine import URL, make_url

from deploy.compose.cli import find
from deploy.native.processes import free_port
from service.database.urls import asyncpg_dsn
from tests.containers.engine import docker
from tests.containers.roles import check_the_two_roles
from tests.metrics import parse, value
from tests.postgres import ROOT, run_sync
from tests.service.observability.test_across_workers import NOTE_ROUTE
from tests.stack import TimedLoad, answered, notes_by_text

# What docker-compose.yml's bind mounts name, relative to the project directory (its .env's).
PROJECT_FILES = ("deploy", "nginx.conf")
# Docker's default address pools. A client on the host reaches nginx's published port through
# the engine's proxy, from the edge network's gateway, not from loopback: the load would meet
# the per-client rate limit that RATE_LIMIT_EXEMPT's loopback spares native mode's tests.
DOCKER_POOLS = "172.16.0.0/12 192.168.0.0/16"
# PATCHes of one note held in flight by a lock on its row while an app container is stopped.
HELD = 10


def cli(directory: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m deploy.compose.cli --standins` for the project in `directory`."""
    command = [sys.executable, "-m", "deploy.compose.cli", "--standins"]
    return subprocess.run(
        [*command, "--project-directory", str(directory), *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def project_env(stack_name: str, http_port: int) -> dict[str, str]:
    """.env.example with real secrets, this project's name and port, two workers a container."""
    settings = {k: str(v) for k, v in dotenv_values(ROOT / ".env.example").items()}
    owner, app = secrets.token_hex(16), secrets.token_hex(16)
    urls = {"MIGRATION_DATABASE_URL": owner, "DATABASE_URL": app}
    for name, password in urls.items():
        settings[name] = make_url(settings[name]).set(password=password).render_as_string(False)
    settings.update(
        STACK_NAME=stack_name,
        HTTP_PORT=str(http_port),
        WEB_CONCURRENCY="2",
        POSTGRES_PASSWORD=owner,
        APP_DB_PASSWORD=app,
        GRAFANA_ADMIN_PASSWORD=secrets.token_hex(16),
        RATE_LIMIT_EXEMPT=f"{settings['RATE_LIMIT_EXEMPT']} {DOCKER_POOLS}",
    )
    return settings


@dataclass
class ComposeStack:
    """The running project: its name, nginx's public URL and its .env."""

    name: str
    url: str
    settings: dict[str, str]

    def containers(self, service: str) -> list[str]:
        """The names of the service's containers, sorted."""
        listed = docker(
            "ps", "--all", "--format", "{{.Names}}",
            "--filter", f"label=com.docker.compose.project={self.name}",
            "--filter", f"label=com.docker.compose.service={service}",
        )  # fmt: skip
        return sorted(listed.stdout.split())

    def inspect(self, container: str, template: str) -> str:
        return docker("inspect", "--format", template, container).stdout.strip()

    def address(self, container: str, network: str = "internal") -> str:
        """The container's address on one of the project's networks."""
        networks = f'(index .NetworkSettings.Networks "{self.name}_{network}")'
        return self.inspect(container, f"{{{{{networks}.IPAddress}}}}")

    def database(self, username: str, password: str) -> URL:
        [db] = self.containers("db")
        return URL.create(
            "postgresql+asyncpg", username=username, password=password,
            host=self.address(db), port=5432, database=self.settings["POSTGRES_DB"],
        )  # fmt: skip

    def owner(self) -> URL:
        return self.database(self.settings["POSTGRES_USER"], self.settings["POSTGRES_PASSWORD"])

    def app_role(self) -> URL:
        return self.database(self.settings["APP_DB_USER"], self.settings["APP_DB_PASSWORD"])

    def json_logs(self, container: str) -> list[dict[str, object]]:
        """The JSON lines the container wrote to stdout."""
        lines = docker("logs", container).stdout.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    async def access_lines(self, container: str, request_ids: set[str]) -> list[dict[str, object]]:
        """The container's access lines of these requests, once it has logged every one
        (nginx flushes its buffered access log every second)."""
        deadline = time.monotonic() + 10
        while True:
            lines = [
                line
                for line in await asyncio.to_thread(self.json_logs, container)
                if line.get("event") == "request" and line.get("request_id") in request_ids
            ]
            if {line["request_id"] for line in lines} == request_ids:
                return lines
            assert time.monotonic() < deadline, f"{container} did not log {request_ids}"
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def compose_stack(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    """The project up (db, migrate, two app containers, nginx), then `down --volumes`."""
    directory = tmp_path_factory.mktemp("compose-project")
    for name in PROJECT_FILES:
        (directory / name).symlink_to(ROOT / name)
    stack_name = f"ctest-{uuid.uuid4().hex[:8]}"
    settings = project_env(stack_name, free_port())
    (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    # .env decides: nothing in this process's environment may override it.
    env = {key: value for key, value in os.environ.items() if key not in settings}
    stack = ComposeStack(
        f"{stack_name}-stack", f"http://127.0.0.1:{settings['HTTP_PORT']}", settings
    )
    started = time.monotonic()
    try:
        up = cli(directory, env, "up", "--scale", "app=2", "nginx")
        took = time.monotonic() - started
        said = [line for line in up.stdout.splitlines() if line.startswith("stack: ")]
        print("\n" + "\n".join(said) + f"\ncompose up: {took:.1f}s")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"stack: compose: {find()}" in up.stdout  # it says which Compose it found
        yield stack
    finally:
        started = time.monotonic()
        down = cli(directory, env, "down", "--volumes")
        print(f"\ncompose down --volumes: {time.monotonic() - started:.1f}s")
        label = f"label=com.docker.compose.project={stack.name}"
        left = {
            kind: docker(kind, "ls", "--quiet", "--filter", label).stdout.split()
            for kind in ("volume", "network")
        }
        left["container"] = docker("ps", "--all", "--quiet", "--filter", label).stdout.split()
        assert down.returncode == 0, down.stdout + down.stderr
        assert not any(left.values()), left


def test_compose_serves_the_api_through_nginx_migrated_with_two_roles(
    compose_stack: ComposeStack,
) -> None:
    """Both app containers healthy by their HEALTHCHECK; the API through nginx; migrate at
    head as the owner; the app logged in as the app role, which may only touch rows."""
    stack = compose_stack
    apps = stack.containers("app")
    assert len(apps) == 2
    for app in apps:
        assert stack.inspect(app, "{{.State.Health.Status}}") == "healthy"
    [migrate] = stack.containers("migrate")
    assert stack.inspect(migrate, "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"

    request_id = f"compose-{uuid.uuid4().hex}"
    created = httpx.post(
        f"{stack.url}/api/v1/notes", json={"text": "composed"}, headers={"X-Request-ID": request_id}
    )
    assert created.status_code == 201, created.text
    assert created.headers["x-request-id"] == request_id
    read = httpx.get(f"{stack.url}{created.headers['location']}")
    assert (read.status_code, read.json()["text"]) == (200, "composed")
    assert httpx.get(f"{stack.url}/metrics").status_code == 404  # never public
    [nginx] = stack.containers("nginx")
    ops = httpx.get(f"http://{stack.address(nginx, 'edge')}:8081/metrics")
    assert ops.status_code == 200
    assert "http_requests_total" in ops.text
    # Exact across the two containers: the one POST, counted once, by whichever served it.
    posts = {"method": "POST", "route": "/api/v1/notes", "status": "201"}
    counts = [
        value(
            parse(httpx.get(f"http://{stack.address(app)}:8000/metrics").text),
            "http_requests_total",
            **posts,
        )
        for app in apps
    ]
    assert sum(counts) == 1, counts
    [access] = run_sync(stack.access_lines(nginx, {request_id}))
    assert access["status"] == 201
    assert str(access["upstream"]).split(":")[0] in {stack.address(app) for app in apps}

    revision = run_sync(check_the_two_roles(stack.owner(), stack.app_role()))
    migrated = docker("logs", migrate).stdout
    assert f"migrations: at {revision}" in migrated, migrated

    async def logins() -> set[str]:
        connection = await asyncpg.connect(asyncpg_dsn(stack.owner()))
        try:
            rows = await connection.fetch(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE client_addr = ANY($1::inet[])",
                [stack.address(app) for app in apps],
            )
        finally:
            await connection.close()
        return {row["usename"] for row in rows}

    assert run_sync(logins()) == {stack.settings["APP_DB_USER"]}
    print(f"\ncompose: migrate at {revision} as {stack.settings['POSTGRES_USER']}; apps as "
          f"{stack.settings['APP_DB_USER']}")  # fmt: skip


@asynccontextmanager
async def row_locked(database: URL, note_id: int) -> AsyncIterator[None]:
    """Hold the note's row lock for the block: every write of that note waits."""
    connection = await asyncpg.connect(asyncpg_dsn(database))
    try:
        async with connection.transaction():
            await connection.execute("SELECT 1 FROM notes WHERE id = $1 FOR UPDATE", note_id)
            yield
    finally:
        await connection.close()


async def patches_in_flight(stack: ComposeStack, apps: list[str]) -> dict[str, float]:
    """How many PATCHes of a note each app container is serving now."""
    async with httpx.AsyncClient(timeout=5) as client:
        found = {}
        for app in apps:
            scraped = await client.get(f"http://{stack.address(app)}:8000/metrics")
            samples = parse(scraped.text)
            found[app] = value(
                samples, "http_requests_in_progress", method="PATCH", route=NOTE_ROUTE
            )
        return found


async def refuses(address: str, port: int) -> None:
    """Until nothing listens on address:port any more (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            _, writer = await asyncio.open_connection(address, port)
        except ConnectionRefusedError:
            return
        writer.close()
        assert time.monotonic() < deadline, f"{address}:{port} still accepts"
        await asyncio.sleep(0.05)


def patch(request_id: str) -> dict[str, Any]:
    """A PATCH's body and headers: no Idempotency-Key, so nothing but the server answers it."""
    return {"json": {"completed": True}, "headers": {"X-Request-ID": request_id}}


def finished_at(stack: ComposeStack, container: str) -> float:
    """When the container's process ended (the engine's clock, the host's), in epoch seconds."""
    stamp = stack.inspect(container, "{{.State.FinishedAt}}").removesuffix("Z")
    seconds, _, fraction = stamp.partition(".")
    ended = datetime.fromisoformat(seconds).replace(tzinfo=UTC).timestamp()
    return ended + float(f"0.{fraction or 0}")


async def test_docker_stop_under_load_drains_the_stopped_app_container(
    compose_stack: ComposeStack,
) -> None:
    """A mixed load of 20 clients through nginx, and ten PATCHes held in flight by a row lock
    (nginx never retries a PATCH: each is answered by the container that took it, or fails).
    The container holding most of them gets `docker stop`: it closes its port, so nginx sends
    what comes next to the other container; it answers every request it holds, then exits 0,
    before Docker's SIGKILL. The load runs until the container is gone, and no request of it
    fails; every note it meant to create exists once. (After that, nginx, which resolved `app`
    once at its start, would still try the gone address: that is no longer a drain, and
    Compose runs one app container; docs/operations.md.)"""
    stack = compose_stack
    apps = stack.containers("app")
    owner = stack.owner()
    load = TimedLoad(stack.url, concurrency=20)
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        note = (await client.post("/api/v1/notes", json={"text": "held"})).json()["id"]
        held_ids = {f"held-{uuid.uuid4().hex}" for _ in range(HELD)}
        running = asyncio.create_task(load.run())
        try:
            await answered(load, 2 * load.concurrency, seconds=30)
            async with row_locked(owner, note):
                held = [
                    asyncio.create_task(client.patch(f"/api/v1/notes/{note}", **patch(request_id)))
                    for request_id in held_ids
                ]
                deadline = time.monotonic() + 20
                while sum((in_flight := await patches_in_flight(stack, apps)).values()) < HELD:
                    assert time.monotonic() < deadline, in_flight
                    await asyncio.sleep(0.05)
                stopped = max(apps, key=lambda app: in_flight[app])
                address = stack.address(stopped)
                stop_began = time.time()
                stopping = asyncio.create_task(
                    asyncio.to_thread(docker, "stop", "--time", "35", stopped)
                )
                await refuses(address, 8000)  # gunicorn had the SIGTERM and closed its port
            answers = await asyncio.gather(*held)
            await stopping
        finally:
            load.stop()
            await running
    gone = finished_at(stack, stopped)

    assert [answer.status_code for answer in answers] == [200] * HELD
    assert stack.inspect(stopped, "{{.State.ExitCode}} {{.State.OOMKilled}}") == "0 false"
    [nginx] = stack.containers("nginx")
    lines = await stack.access_lines(nginx, held_ids)
    assert {(line["upstream_status"], line["status"]) for line in lines} == {("200", 200)}
    upstream = f"{address}:8000"
    on_stopped = {str(line["request_id"]) for line in lines if line["upstream"] == upstream}
    assert on_stopped, "no held request was in flight on the stopped container"
    served = await stack.access_lines(stopped, on_stopped)
    assert {line["status"] for line in served} == {200}
    result = load.result
    assert not result.unexpected(), result.counts()
    created = await notes_by_text(owner, result.intended.values())
    assert set(created.values()) == {1}
    assert set(created) == set(result.intended.values())
    sent_at = [sent for sent, _ in load.spans]
    draining = [sent for sent in sent_at if stop_began <= sent < gone]
    after = [sent for sent in sent_at if sent >= gone]
    assert draining, "no request was sent while the container drained"
    print(
        f"\ndocker stop of {stopped} under load: {len(result.outcomes)} requests, none failed "
        f"({len(draining)} sent while it drained, {len(after)} after it was gone), "
        f"{sum(result.retries.values())} client retries {dict(result.retries)}; "
        f"{len(on_stopped)} of {HELD} held PATCHes in flight on it, each answered 200 by it; "
        f"gone {gone - stop_began:.1f}s after the stop began, exit code 0"
    )
