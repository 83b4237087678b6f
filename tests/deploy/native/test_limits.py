"""nginx's limits per client address, on a real stack with loopback's exemption off."""

import asyncio
import os
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.postgres import fresh_database
from tests.stack import Stack, running_stack

LIMITS = {
    "RATE_LIMIT_RPS": "5",
    "RATE_LIMIT_BURST": "5",
    "CONN_LIMIT": "8",
    # Nobody exempt: the tests' own loopback clients are limited like any other.
    "RATE_LIMIT_EXEMPT": "",
}


@pytest.fixture(scope="module")
def limited_stack(pg_server: URL) -> Iterator[Stack]:
    """A stack with nginx's settings away from their defaults, its workers too."""
    env = {**LIMITS, "NGINX_SCHED_POLICY": "other", "NGINX_WORKER_PROCESSES": "3"}
    with fresh_database(pg_server) as url, running_stack(url, extra_env=env) as running:
        yield running


def test_nginx_starts_its_workers_as_the_settings_say(limited_stack: Stack) -> None:
    """NGINX_WORKER_PROCESSES=3 and NGINX_SCHED_POLICY=other: three workers, and nginx under
    the kernel's default policy."""
    master, workers = limited_stack.nginx_pids()
    assert len(workers) == 3
    assert {os.sched_getscheduler(pid) for pid in [master, *workers]} == {os.SCHED_OTHER}


def test_reload_gives_running_nginx_a_changed_sched_policy(limited_stack: Stack) -> None:
    """NGINX_SCHED_POLICY changed, then `make reload`: nginx's master and workers take it (the
    config is the same, so nginx itself is not reloaded); changed back, back again."""
    env = limited_stack.env
    for name, policy in (("batch", os.SCHED_BATCH), ("other", os.SCHED_OTHER)):
        limited_stack.env = {**env, "NGINX_SCHED_POLICY": name}
        try:
            result = limited_stack.run("reload")
        finally:
            limited_stack.env = env
        assert f"nginx: now under NGINX_SCHED_POLICY={name}" in result.stdout
        master, workers = limited_stack.nginx_pids()
        assert {os.sched_getscheduler(pid) for pid in [master, *workers]} == {policy}


async def test_a_burst_over_the_rate_gets_429s_and_nothing_else_fails(
    limited_stack: Stack,
) -> None:
    """40 requests at once from one address: the burst (5) and the rate pass, the rest get
    nginx's 429 with a JSON body, Retry-After and the security headers."""
    async with httpx.AsyncClient(base_url=limited_stack.url, timeout=30) as client:
        answers = await asyncio.gather(*(client.get("/healthz") for _ in range(40)))
    statuses = Counter(answer.status_code for answer in answers)
    assert set(statuses) == {200, 429}, statuses
    assert 5 <= statuses[200] < 40
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.json() == {"detail": "Too Many Requests"}
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-content-type-options"] == "nosniff"
    allowed = next(answer for answer in answers if answer.status_code == 200)
    assert "retry-after" not in allowed.headers


async def test_another_client_at_a_normal_rate_is_not_limited(limited_stack: Stack) -> None:
    """While one address bursts, another (127.0.0.2, its own key) at 2 requests a second gets
    every answer."""
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with (
        httpx.AsyncClient(base_url=limited_stack.url, timeout=30) as noisy,
        httpx.AsyncClient(base_url=limited_stack.url, transport=transport, timeout=30) as calm,
    ):

        async def burst() -> Counter[int]:
            answers = await asyncio.gather(*(noisy.get("/healthz") for _ in range(60)))
            return Counter(answer.status_code for answer in answers)

        async def steady() -> list[int]:
            statuses = []
            for _ in range(6):
                statuses.append((await calm.get("/healthz")).status_code)
                await asyncio.sleep(0.5)
            return statuses

        noisy_statuses, calm_statuses = await asyncio.gather(burst(), steady())
    assert noisy_statuses[429] > 0
    assert calm_statuses == [200] * 6


async def test_requests_past_the_connection_limit_get_429(limited_stack: Stack) -> None:
    """CONN_LIMIT (8) requests in progress from one address: 10 POSTs whose bodies never come
    hold their requests open in nginx (well within its 10 s body timeout); the 2 past the
    limit are answered 429 at once, the 8 others are still waiting for their bodies."""
    host, port = "127.0.0.1", limited_stack.http_port
    request = (
        b"POST /api/v1/notes HTTP/1.1\r\nHost: notes.test\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    held = []
    try:
        for _ in range(10):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            held.append((reader, writer))
            # Paced under the rate limit (5 a second): only the connection limit may refuse.
            await asyncio.sleep(0.21)

        async def first_line(reader: asyncio.StreamReader) -> bytes:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=1)
            except TimeoutError:
                return b"waiting"
            return line.split(b" ")[1] if line else b"closed"

        lines = await asyncio.gather(*(first_line(reader) for reader, _ in held))
    finally:
        for _, writer in held:
            writer.close()
    assert Counter(lines) == {b"waiting": 8, b"429": 2}, lines
