"""`examples/inventory`, an app the stack did not write: how the tests serve it, and a load of
its API for the stack's own tests (one host, several hosts) that must not depend on the notes."""

import random
import uuid

import httpx

from tests.postgres import ROOT
from tests.stack import ConcurrentLoad

EXAMPLE = ROOT / "examples" / "inventory"
API_KEY = "test-key-" + uuid.uuid4().hex[:8]
# What `make up` is given to serve it (with a DATABASE_URL of its own).
INVENTORY_ENV = {
    "APP": "inventory.main:app",
    "APP_PATH": str(EXAMPLE),
    "MIGRATIONS": str(EXAMPLE / "alembic.ini"),
    "INVENTORY_API_KEY": API_KEY,
    "STACK_NAME": "inventory",
    # Declared for the notes service; this app's engine ignores it.
    "DB_POOL_SIZE": "1",
}
# Its engine (inventory/db.py): pool_size=3, max_overflow=2 in each worker.
POOL_PER_WORKER = 3 + 2
ITEMS = "/api/v1/items/"
ITEM = "/api/v1/items/{item_id}"
STATS = "/api/v1/admin/stats"
PING = "/public/ping"
BODY = {"name": "load", "owner_email": "owner@example.com", "quantity": 1}


async def an_item(base_url: str) -> int:
    """A new item's id."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.post(ITEMS, json=BODY)
    assert response.status_code == 201, response.text
    item_id: int = response.json()["id"]
    return item_id


class ItemsLoad(ConcurrentLoad):
    """Concurrent clients creating items (about one request in four) and reading them back.

    The app has no Idempotency-Key: a POST that fails is not retried, and counts as the
    failure it is. `writes=False` only reads (items made before the load starts): what a
    stack must keep answering even while it loses a worker or a host, since nginx retries a
    read on another, and never a POST.
    """

    def __init__(self, base_url: str, concurrency: int, *, writes: bool = True) -> None:
        super().__init__(base_url, concurrency)
        self.writes = writes
        self.item_ids: list[int] = []

    async def prepare(self) -> None:
        self.item_ids.extend([await an_item(self.base_url) for _ in range(5)])

    async def one(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        request_id = uuid.uuid4().hex
        self.result.request_ids.add(request_id)
        headers = {"X-Request-ID": request_id}
        method = "POST" if self.writes and rng.random() < 0.25 else "GET"
        outcome: int | str
        try:
            if method == "POST":
                response = await client.post(ITEMS, json=BODY, headers=headers)
                if response.status_code == 201:
                    self.item_ids.append(response.json()["id"])
            else:
                item_id = rng.choice(self.item_ids)
                response = await client.get(f"{ITEMS}{item_id}", headers=headers)
            outcome = response.status_code
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        self.result.outcomes.append((method, outcome))


def reads_only(base_url: str, concurrency: int) -> ItemsLoad:
    """An `ItemsLoad` that only reads: for `background_load(..., make=reads_only)`."""
    return ItemsLoad(base_url, concurrency, writes=False)
