"""The whole stack, end to end: nginx → gunicorn (several uvicorn workers) → PostgreSQL."""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from deploy.native import monitoring, nginx
from deploy.native.processes import alive, free_port, read_pid
from service.runtime.capacity import usable_cpus
from tests.metrics import value
from tests.postgres import PG_CLUSTER, ROOT, fresh_database, locked_table
from tests.service.observability.test_across_workers import NOTE_ROUTE, scrape
from tests.stack import (
    Load,
    Stack,
    background_load,
    nginx_access_lines,
    notes_by_text,
    running_stack,
)


async def test_mixed_load_has_no_errors_and_spreads_over_workers(stack: Stack) -> None:
    # 100 clients at once, six requests each: what is proven is that every answer is the
    # one expected and each is served once, not how many the stack serves per second.
    result = await Load(stack.url, concurrency=100).run(total=600)

    assert len(result.outcomes) == 600
    assert not result.unexpected(), result.counts()
    assert not result.retries
    served = await stack.access_pids(result.request_ids)
    assert sum(served.values()) == 600
    assert len(served) >= 2, f"one worker served everything: {served}"


async def test_a_killed_worker_loses_and_duplicates_nothing(stack: Stack) -> None:
    """nginx retries the reads that hit the dead worker; the clients retry their POSTs with
    the same Idempotency-Key, and every note they meant to create exists exactly once."""
    before = stack.worker_pids()
    async with background_load(stack.url, concurrency=30) as load:
        os.kill(before[0], signal.SIGKILL)
        for _ in range(100):  # gunicorn starts a replacement; the load goes on meanwhile
            if len(stack.worker_pids()) == len(before) and before[0] not in stack.worker_pids():
                break
            await asyncio.sleep(0.1)
    after = stack.worker_pids()

    assert len(after) == len(before)
    assert before[0] not in after
    errors = (stack.layout.nginx_error_log).read_text()
    assert not load.result.unexpected(), (load.result.counts(), errors)
    created = await notes_by_text(stack.database, load.result.intended.values())
    assert len(load.result.intended) > 50
    assert set(created.values()) == {1}
    assert set(created) == set(load.result.intended.values())
    assert (await httpx.AsyncClient().get(f"{stack.url}/readyz")).status_code == 200


async def test_reload_under_load_fails_no_request_and_loses_no_count(stack: Stack) -> None:
    """New master, new workers, no failed request; and the counts stay exact across it: the
    reads of a route the load never sends, 100 before the reload and 100 after, are all in
    the new workers' scrape."""
    old_master, old_workers = stack.master_pid(), stack.worker_pids()
    stats = {"route": "/api/v1/notes/stats", "method": "GET", "status": "200"}
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:

        async def read_stats() -> None:
            answers = await asyncio.gather(*(client.get("/api/v1/notes/stats") for _ in range(100)))
            assert [answer.status_code for answer in answers] == [200] * 100

        before, _ = await scrape(client, stack)
        async with background_load(stack.url) as load:
            await read_stats()
            await stack.arun("reload")
            await read_stats()
        after, _ = await scrape(client, stack)
    assert not load.result.unexpected(), load.result.counts()
    assert stack.master_pid() != old_master
    new_workers = stack.worker_pids()
    assert len(new_workers) == len(old_workers)
    assert not set(new_workers) & set(old_workers)
    counted = value(after, "http_requests_total", **stats)
    assert counted - value(before, "http_requests_total", **stats) == 200


async def test_scale_up_and_down_under_load_fails_no_request(stack: Stack) -> None:
    """No failed request, and the metrics follow: the live and configured worker counts, and
    each live worker's own series."""
    async with httpx.AsyncClient(timeout=30) as client, background_load(stack.url) as load:
        await stack.arun("scale", "3")
        assert len(stack.worker_pids()) == 3
        deadline = time.monotonic() + 10  # a new worker's series come with its first sample
        while True:
            samples, _ = await scrape(client, stack)
            sampled = {
                dict(labels)["pid"] for (name, labels) in samples if name == "worker_cpu_seconds"
            }
            if sampled == {str(pid) for pid in stack.worker_pids()} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert sampled == {str(pid) for pid in stack.worker_pids()}
        assert value(samples, "app_workers_live") == 3
        assert value(samples, "gunicorn_workers_configured") == 3
        await stack.arun("scale", "1")
        assert len(stack.worker_pids()) == 1
        await stack.arun("scale", "2")
        samples, _ = await scrape(client, stack)
        assert value(samples, "app_workers_live") == 2
        assert value(samples, "gunicorn_workers_configured") == 2
    assert not load.result.unexpected(), load.result.counts()
    assert len(stack.worker_pids()) == 2


async def test_scale_refuses_what_the_database_cannot_hold(stack: Stack) -> None:
    before = stack.worker_pids()
    result = await stack.arun("scale", "500", check=False)
    assert result.returncode != 0
    assert "connection budget exceeded" in result.stderr
    assert "500 workers" in result.stderr
    assert stack.worker_pids() == before


async def test_request_id_is_echoed_when_valid_and_generated_otherwise(stack: Stack) -> None:
    mine = f"abc-123.{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=stack.url) as client:
        echoed = await client.get("/healthz", headers={"X-Request-ID": mine})
        replaced = await client.get("/healthz", headers={"X-Request-ID": "not valid!"})
        too_long = await client.get("/healthz", headers={"X-Request-ID": "a" * 129})
        generated = await client.get("/healthz")
    assert echoed.headers["x-request-id"] == mine
    for response in (replaced, too_long, generated):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    app_line = next(line for line in await stack.logged({mine}) if line.get("request_id") == mine)
    assert app_line["route"] == "/healthz"
    assert await nginx_access_lines(stack.layout.nginx_access_log, {mine})


async def test_the_app_sees_the_client_address_nginx_saw(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        await client.get(
            "/healthz", headers={"X-Request-ID": "client-ip-check", "X-Forwarded-For": "6.6.6.6"}
        )
    log = await stack.logged({"client-ip-check"})
    line = next(line for line in log if line.get("request_id") == "client-ip-check")
    # A forged X-Forwarded-For is replaced by the address nginx saw.
    assert line["client_ip"] == "127.0.0.1"


async def test_metrics_are_not_public_and_large_bodies_are_refused(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        metrics = await client.get("/metrics")
        large = await client.post(
            "/api/v1/notes",
            content=b'{"text": "' + b"x" * (1024 * 1024 + 1) + b'"}',
            headers={"content-type": "application/json"},
        )
        stub = await client.get(f"{stack.ops_url}/stub_status")
    assert metrics.status_code == 404
    assert "x-request-id" in metrics.headers
    assert large.status_code == 413
    assert stub.status_code == 200
    assert "Active connections" in stub.text


def _raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are and read the whole answer (nginx closes after an error)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"NONSENSE\r\n\r\n", 400),
    ],
    ids=["malformed-header", "header-too-large", "uri-too-long", "malformed-request-line"],
)
def test_nginx_refusals_are_json(stack: Stack, request_bytes: bytes, status: int) -> None:
    answered, headers, body = _raw_request(stack.http_port, request_bytes)
    assert answered == status
    assert headers["content-type"] == "application/json"
    assert "detail" in json.loads(body)


def test_rendered_nginx_config_passes_nginx_t(stack: Stack) -> None:
    conf = stack.layout.nginx_conf
    result = subprocess.run(
        ["nginx", "-t", "-p", str(conf.parent), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "${" not in conf.read_text()


@pytest.mark.stack
def test_a_daemon_that_exits_at_start_is_reported_with_its_own_words(pg_server: URL) -> None:
    """Prometheus on a port another program holds: it exits at once, and `up` says so with
    Prometheus's own last lines instead of waiting a minute for /-/ready."""
    run_dir = Path(tempfile.mkdtemp(prefix="notes-stack-"))
    run_dir.chmod(0o755)
    with fresh_database(pg_server) as url, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "RUN_DIR": str(run_dir),
            "DATABASE_URL": url.render_as_string(hide_password=False),
            **{name: str(free_port()) for name in ("HTTP_PORT", "OPS_PORT", "NGINX_EXPORTER_PORT")},
            "PROMETHEUS_PORT": str(port),
        }
        native = [sys.executable, "-m", "deploy.native"]
        started = time.monotonic()
        try:
            result = subprocess.run(
                [*native, "up"], check=False, cwd=ROOT, env=env, capture_output=True,
                text=True, timeout=120,
            )  # fmt: skip
            took = time.monotonic() - started
        finally:
            subprocess.run(
                [*native, "down"], check=False, cwd=ROOT, env=env, capture_output=True,
                timeout=60,
            )  # fmt: skip
            shutil.rmtree(run_dir, ignore_errors=True)
    assert result.returncode == 1, result.stdout + result.stderr
    reported = result.stderr.split("Prometheus exited (1) instead of answering /-/ready:\n", 1)
    assert len(reported) == 2, result.stderr
    assert "address already in use" in reported[1], reported[1]
    assert took < 60, f"{took:.1f}s: it waited for /-/ready"


def test_nginx_and_the_workers_of_its_reloads_run_under_sched_batch(stack: Stack) -> None:
    """NGINX_SCHED_POLICY's default. The daemons `up` starts right after nginx (the exporter,
    Prometheus) and gunicorn keep the kernel's default: the runner took SCHED_BATCH for
    nginx's start only."""
    master, workers = stack.nginx_pids()
    assert workers
    assert {pid: os.sched_getscheduler(pid) for pid in [master, *workers]} == dict.fromkeys(
        [master, *workers], os.SCHED_BATCH
    )
    others = [stack.master_pid(), *stack.worker_pids()]
    others += [read_pid(stack.layout.pidfile(name)) or 0 for name in monitoring.DAEMONS]
    assert {os.sched_getscheduler(pid) for pid in others} == {os.SCHED_OTHER}
    os.kill(master, signal.SIGHUP)  # nginx's own reload: new workers, forked by the master
    deadline = time.monotonic() + 10
    # Until the old workers are told to finish (or gone) and only new ones serve.
    while not (fresh := set(stack.nginx_pids()[1])) or fresh & set(workers):
        assert time.monotonic() < deadline, "nginx did not replace its workers on SIGHUP"
        time.sleep(0.05)
    assert {os.sched_getscheduler(pid) for pid in fresh} == {os.SCHED_BATCH}


def test_nginx_starts_one_worker_per_8_usable_cores(stack: Stack) -> None:
    assert [nginx.default_worker_processes(cpus) for cpus in (1, 2, 8, 9, 16, 17)] == [
        1, 1, 1, 2, 2, 3,
    ]  # fmt: skip
    assert len(stack.nginx_pids()[1]) == nginx.default_worker_processes(usable_cpus())


def test_up_twice_is_harmless(stack: Stack) -> None:
    master, workers = stack.master_pid(), stack.worker_pids()
    result = stack.run("up")
    assert "already running" in result.stdout
    assert stack.master_pid() == master
    assert stack.worker_pids() == workers


def test_status_lists_the_workers(stack: Stack) -> None:
    result = stack.run("status")
    for pid in stack.worker_pids():
        assert str(pid) in result.stdout


@pytest.mark.stack
async def test_sigterm_lets_slow_requests_finish_and_disposes_every_engine(
    pg_server: URL,
) -> None:
    with fresh_database(pg_server) as url, running_stack(url, workers=2) as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
            created = await client.post("/api/v1/notes", json={"text": "slow"})
            note_url = created.headers["location"]
            workers = stack.worker_pids()
            master = stack.master_pid()
            # Every read of notes waits on this lock: the requests are slow.
            async with locked_table(url):
                slow = [asyncio.create_task(client.get(note_url)) for _ in range(10)]
                for _ in range(100):  # until the workers hold all ten
                    samples, _ = await scrape(client, stack)
                    if value(samples, "http_requests_in_progress", route=NOTE_ROUTE) == 10:
                        break
                    await asyncio.sleep(0.1)
                assert value(samples, "http_requests_in_progress", route=NOTE_ROUTE) == 10
                os.kill(master, signal.SIGTERM)
                await asyncio.sleep(1)  # the workers stop taking requests, these still wait
            responses = await asyncio.gather(*slow)
        for _ in range(100):
            if not alive(master):
                break
            await asyncio.sleep(0.1)
        log = stack.app_log()

        assert [response.status_code for response in responses] == [200] * 10
        assert not alive(master)
        disposed = {line["pid"] for line in log if line.get("event") == "database_engine_disposed"}
        assert set(workers) <= disposed


@pytest.mark.stack
def test_gunicorn_refuses_to_start_past_the_connection_budget(tmp_path: Path) -> None:
    """A server with max_connections=20 cannot hold 10 workers of 5 connections."""
    # The cluster's owner (postgres) cannot enter pytest's private tmp dir.
    workdir = Path(tempfile.mkdtemp(prefix="notes-small-pg-"))
    workdir.chmod(0o755)
    datadir = workdir / "small"
    port = free_port()
    env = {**os.environ, "PG_MAX_CONNECTIONS": "20"}
    subprocess.run([PG_CLUSTER, "start", datadir, str(port), "--trust"], env=env, check=True)
    try:
        run_dir = tmp_path / "run"
        result = subprocess.run(
            [Path(sys.executable).parent / "gunicorn", "--config", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres",
                "WEB_CONCURRENCY": "10",
                "RUN_DIR": str(run_dir),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        subprocess.run([PG_CLUSTER, "stop", datadir], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "connection budget exceeded" in output
    assert "10 workers x 5 connections" in output
    assert "max_connections" in output
    assert "run at most 2 workers" in output


async def test_the_interactive_docs_keep_a_policy_that_lets_them_load(stack: Stack) -> None:
    """/docs loads Swagger UI's scripts: nginx sends it no Content-Security-Policy of its own
    (the API's forbids loading anything), and the rest of the security headers as usual."""
    async with httpx.AsyncClient(base_url=stack.url) as client:
        docs = await client.get("/docs")
        api = await client.get("/api/v1/notes")
    assert docs.status_code == 200
    assert "content-security-policy" not in docs.headers
    assert docs.headers["x-content-type-options"] == "nosniff"
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
