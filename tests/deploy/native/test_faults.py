"""Faults, against the real stack on its own durable PostgreSQL cluster (what `make up` runs):
a crash of the database, an outage, a table locked past the deadline, a handler that fails,
and a driver that fails mid-exchange. Every answer is counted; none may be unexpected."""

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest
from fastapi import Response
from sqlalchemy.engine import URL

from service.config import load_settings
from service.database.connections import create_database
from service.database.urls import asyncpg_dsn
from service.idempotency import service as idempotency
from service.notes import service
from tests.apps import FAILING_ROUTE
from tests.postgres import locked_table
from tests.stack import Stack, running_stack

NOTES = "/api/v1/notes"
REQUEST_TIMEOUT = 3.0
DB_CONNECT_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def fault_stack() -> Iterator[Stack]:
    """Two workers serving the app plus a failing route, on a private cluster."""
    env = {
        "APP": "tests.apps:failing_app()",
        "REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
        "DB_CONNECT_TIMEOUT": str(DB_CONNECT_TIMEOUT),
    }
    with running_stack(None, workers=2, extra_env=env) as stack:
        yield stack


@dataclass(frozen=True)
class Answer:
    """One request: when it was sent, how long its answer took, and what the answer was."""

    method: str
    sent: float
    seconds: float
    status: int | str
    retry_after: str | None = None


@dataclass
class TimedLoad:
    """Readers and writers that record every answer, until stopped."""

    base_url: str
    note_id: int
    answers: list[Answer] = field(default_factory=list)
    acknowledged: dict[int, str] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _one(self, client: httpx.AsyncClient, method: str) -> None:
        sent = time.monotonic()
        text = f"fault {uuid.uuid4().hex}"
        try:
            if method == "POST":
                response = await client.post(NOTES, json={"text": text})
            else:
                response = await client.get(f"{NOTES}/{self.note_id}")
        except httpx.TransportError as exc:
            self.answers.append(Answer(method, sent, time.monotonic() - sent, type(exc).__name__))
            await asyncio.sleep(0.05)
            return
        seconds = time.monotonic() - sent
        self.answers.append(
            Answer(method, sent, seconds, response.status_code, response.headers.get("retry-after"))
        )
        if response.status_code == 201:
            self.acknowledged[response.json()["id"]] = text
        elif response.status_code == 503:
            await asyncio.sleep(0.05)  # as a client honouring Retry-After, but faster

    async def client(self, method: str) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            while not self.stop.is_set():
                await self._one(client, method)

    def statuses(self) -> Counter[tuple[str, int | str]]:
        return Counter((answer.method, answer.status) for answer in self.answers)


@asynccontextmanager
async def timed_load(stack: Stack, readers: int = 8, writers: int = 4) -> AsyncIterator[TimedLoad]:
    """Run readers (GET by id) and writers (POST) for the duration of the block."""
    async with httpx.AsyncClient(base_url=stack.url) as client:
        seed = await client.post(NOTES, json={"text": "read under faults"})
        assert seed.status_code == 201
    load = TimedLoad(stack.url, seed.json()["id"])
    clients = [load.client("GET") for _ in range(readers)] + [
        load.client("POST") for _ in range(writers)
    ]
    task = asyncio.gather(*clients)
    try:
        yield load
    finally:
        load.stop.set()
        await task


async def answered(load: TimedLoad, count: int, sent_after: float = 0.0) -> None:
    """Wait until `count` requests sent after `sent_after` (time.monotonic()) have their
    answer, 30 s at most past that time."""
    deadline = max(time.monotonic(), sent_after) + 30
    while sum(answer.sent > sent_after for answer in load.answers) < count:
        assert time.monotonic() < deadline, f"{count} answers never came: {load.statuses()}"
        await asyncio.sleep(0.05)


async def wait_ready(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        for _ in range(150):
            if (await client.get("/readyz")).status_code == 200:
                return
            await asyncio.sleep(0.2)
    raise AssertionError("the stack was not ready again within 30 s")


# --- 1. an acknowledged write survives a crash --------------------------------------------


async def test_every_acknowledged_write_survives_a_crash_of_the_database(
    fault_stack: Stack,
) -> None:
    async with timed_load(fault_stack, readers=2, writers=10) as load:
        deadline = time.monotonic() + 60
        while len(load.acknowledged) <= 100:  # enough writes to mean something
            assert time.monotonic() < deadline, load.statuses()
            await asyncio.sleep(0.05)
        # What a power cut or an OOM kill does: no shutdown checkpoint, recovery from the WAL.
        await asyncio.to_thread(fault_stack.postgres, "crash")
        await asyncio.sleep(1)
    await asyncio.to_thread(fault_stack.postgres, "start")
    await wait_ready(fault_stack)

    statuses = load.statuses()
    assert set(statuses) <= {("GET", 200), ("GET", 503), ("POST", 201), ("POST", 503)}, statuses
    assert statuses["POST", 503] > 0, "the crash was not felt"
    connection = await asyncpg.connect(asyncpg_dsn(fault_stack.database))
    try:
        rows = await connection.fetch(
            "SELECT id, text FROM notes WHERE id = ANY($1)", list(load.acknowledged)
        )
    finally:
        await connection.close()
    found = {row["id"]: row["text"] for row in rows}
    assert len(load.acknowledged) > 100, "too few writes to mean anything"
    lost = {
        note_id: text for note_id, text in load.acknowledged.items() if found.get(note_id) != text
    }
    assert not lost, f"{len(lost)} of {len(load.acknowledged)} acknowledged notes were lost"
    print(f"crash: {len(load.acknowledged)} writes acknowledged, all found; {dict(statuses)}")
    # No id that a client was given is handed out again.
    async with httpx.AsyncClient(base_url=fault_stack.url) as client:
        after = await client.post(NOTES, json={"text": "after the crash"})
    assert after.json()["id"] > max(load.acknowledged)


# --- 7. the database stopped and started under load ----------------------------------------


async def test_a_database_outage_gives_fast_503s_and_heals_without_a_restart(
    fault_stack: Stack,
) -> None:
    master, workers = fault_stack.master_pid(), fault_stack.worker_pids()
    async with timed_load(fault_stack) as load:
        await answered(load, 20)
        stopped = time.monotonic()
        await asyncio.to_thread(fault_stack.postgres, "stop")
        await asyncio.sleep(4)
        await asyncio.to_thread(fault_stack.postgres, "start")
        back = time.monotonic()
        await answered(load, 20, sent_after=back + 5)  # healed within 5 s, asserted below

    statuses = load.statuses()
    assert set(statuses) <= {("GET", 200), ("GET", 503), ("POST", 201), ("POST", 503)}, statuses
    unavailable = [answer for answer in load.answers if answer.status == 503]
    assert unavailable, "the outage was not felt"
    assert all(answer.retry_after == "1" for answer in unavailable)
    slowest = max(answer.seconds for answer in load.answers)
    assert slowest <= DB_CONNECT_TIMEOUT + 1, f"an answer took {slowest:.2f}s"
    assert all(answer.sent > stopped - 1 for answer in unavailable)
    healed = [answer for answer in load.answers if answer.sent >= back + 5]
    assert healed, "no requests after the database came back"
    assert {answer.status for answer in healed} <= {200, 201}, Counter(a.status for a in healed)
    assert fault_stack.master_pid() == master
    assert fault_stack.worker_pids() == workers
    print(f"outage: slowest answer {slowest:.2f}s; {dict(statuses)}")


# --- 5. one deadline for the whole request ---------------------------------------------------


async def test_a_locked_table_is_answered_within_the_deadline(fault_stack: Stack) -> None:
    probes: list[tuple[int, float]] = []

    async def probe_liveness(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=fault_stack.url) as client:
            while not stop.is_set():
                sent = time.monotonic()
                status = (await client.get("/healthz")).status_code
                probes.append((status, time.monotonic() - sent))
                await asyncio.sleep(0.1)

    async with timed_load(fault_stack, readers=12, writers=4) as load:
        await answered(load, 20)
        # Every read and write of notes waits: longer than the deadline twice over.
        async with locked_table(fault_stack.database):
            locked = time.monotonic()
            stop_probes = asyncio.Event()
            prober = asyncio.create_task(probe_liveness(stop_probes))
            await asyncio.sleep(2 * REQUEST_TIMEOUT)
        unlocked = time.monotonic()
        stop_probes.set()
        await prober
        await answered(load, 20, sent_after=unlocked + 1)

    statuses = load.statuses()
    assert set(statuses) <= {("GET", 200), ("GET", 503), ("POST", 201), ("POST", 503)}, statuses
    late = [answer for answer in load.answers if answer.seconds > REQUEST_TIMEOUT + 1]
    assert not late, (
        f"{len(late)} answers beyond the deadline, the slowest {max(a.seconds for a in late):.1f}s"
    )
    timed_out = [answer for answer in load.answers if answer.status == 503]
    assert timed_out, "the lock was not felt"
    assert all(answer.retry_after == "1" for answer in timed_out)
    assert all(locked - 1 < answer.sent < unlocked for answer in timed_out)
    after = [answer for answer in load.answers if answer.sent > unlocked + 1]
    assert after
    assert {answer.status for answer in after} <= {200, 201}
    assert probes
    assert {status for status, _ in probes} == {200}
    # Far below the deadline: liveness never waits on the database.
    assert max(seconds for _, seconds in probes) < 1
    slowest = max(answer.seconds for answer in load.answers)
    print(f"lock: {len(load.answers)} answers, slowest {slowest:.2f}s; {dict(statuses)}")


# --- 3. a 500 does not break the next request on its connection ---------------------------


async def test_a_500_leaves_the_connection_to_nginx_usable(fault_stack: Stack) -> None:
    statuses = []
    # One client connection: nginx reuses the upstream connection the 500 came back on.
    async with httpx.AsyncClient(base_url=fault_stack.url) as client:
        for attempt in range(20):
            failed = await client.get(FAILING_ROUTE)
            assert failed.status_code == 500
            assert failed.json() == {"detail": "Internal Server Error"}
            assert "app;dur=" in failed.headers["server-timing"]
            created = await client.post(NOTES, json={"text": f"after a 500, #{attempt}"})
            statuses.append(created.status_code)
    assert statuses == [201] * 20
    await asyncio.sleep(0.3)
    log = fault_stack.app_log()
    assert sum(line.get("event") == "unhandled_error" for line in log) >= 20
    assert not [line for line in log if "Exception in ASGI application" in str(line.get("event"))]


# --- 4. a driver that failed mid-exchange leaves nothing behind in the pool -----------------


async def test_a_driver_failure_leaves_no_trap_in_the_pool(database_url: URL) -> None:
    statement_timeout = 0.5
    settings = load_settings(
        database_url=database_url.render_as_string(hide_password=False),
        db_pool_size=3,
        db_statement_timeout=statement_timeout,
    )
    database = create_database(settings)
    too_big = 2**64  # no bigint: asyncpg prepares the statement, then cannot encode this

    async def update(connection: asyncpg.Connection) -> Response:
        await service.update_note(
            connection=connection, note_id=too_big, changes={"completed": True}, if_match=None
        )
        return Response(status_code=200)

    failures: dict[str, Callable[[], Awaitable[object]]] = {
        "read": lambda: service.get_note(database=database, note_id=too_big),
        "list": lambda: service.list_notes(
            database=database, limit=5, completed=None, after_id=too_big
        ),
        "write": lambda: idempotency.run(database=database, request=None, write=update),
    }
    try:
        for name, fail in failures.items():
            with pytest.raises(asyncpg.DataError, match="invalid input for query argument"):
                await fail()
            # Past the statement timeout that the failed exchange may have left armed.
            await asyncio.sleep(statement_timeout * 2)
            # More reads at once than connections, three times: every pooled one serves some.
            for _ in range(3):
                pages = await asyncio.gather(
                    *(
                        service.list_notes(
                            database=database, limit=1, completed=None, after_id=None
                        )
                        for _ in range(9)
                    ),
                    return_exceptions=True,
                )
                errors = [page for page in pages if isinstance(page, BaseException)]
                assert not errors, f"after a failed {name}: {errors[0]!r}"
    finally:
        await database.dispose()
