"""nginx's limits per client address, on a real stack with loopback's exemption off."""

import asyncio
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
    "CONN_LIMIT": "50",
    # Nobody exempt: the tests' own loopback clients are limited like any other.
    "RATE_LIMIT_EXEMPT": "",
}


@pytest.fixture(scope="module")
def limited_stack(pg_server: URL) -> Iterator[Stack]:
    with fresh_database(pg_server) as url, running_stack(url, extra_env=LIMITS) as running:
        yield running


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
