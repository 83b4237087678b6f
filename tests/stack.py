"""The real stack for end-to-end tests: started with `python -m deploy.native`, driven by load."""

import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import psutil
from sqlalchemy.engine import URL, make_url

from deploy.native.layout import RunLayout
from deploy.native.processes import alive, children, free_port, port_open, read_pid
from deploy.native.settings import StackSettings
from deploy.native.state import Stack as NativeStack
from service.database.urls import asyncpg_dsn
from tests.postgres import PG_CLUSTER, ROOT


@dataclass
class Stack:
    """One running stack: the runner's view of it (ports, layout), its environment and its
    database."""

    native: NativeStack
    env: dict[str, str]
    database: URL

    @property
    def url(self) -> str:
        return self.native.public_url

    @property
    def ops_url(self) -> str:
        return self.native.ops_url

    @property
    def prometheus_url(self) -> str:
        return self.native.prometheus_url

    @property
    def http_port(self) -> int:
        return self.native.settings.http_port

    @property
    def ops_port(self) -> int:
        return self.native.settings.ops_port

    @property
    def layout(self) -> RunLayout:
        """Where this stack keeps its files."""
        return self.native.layout

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a `python -m deploy.native` command against this stack."""
        result = subprocess.run(
            [sys.executable, "-m", "deploy.native", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            msg = f"deploy.native {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
            raise AssertionError(msg)
        return result

    async def arun(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`run` without blocking the event loop (load keeps flowing meanwhile)."""
        return await asyncio.to_thread(self.run, *args, check=check)

    def postgres(self, command: str) -> None:
        """`pg-cluster start|stop|crash` on the stack's private cluster (`make up`'s default)."""
        args = [str(self.layout.postgres_dir)]
        if command == "start":
            args.append(str(self.database.port))
        subprocess.run([PG_CLUSTER, command, *args], check=True, capture_output=True)

    def master_pid(self) -> int:
        return int(self.layout.gunicorn_pidfile.read_text())

    def worker_pids(self) -> list[int]:
        """The live workers of the current master."""
        return children(self.master_pid())

    def nginx_pids(self) -> tuple[int, list[int]]:
        """nginx's master and its workers, but those a reload told to finish and exit."""
        master = read_pid(self.layout.nginx_pidfile)
        assert master, "nginx is not running"
        return master, [pid for pid in children(master) if "shutting down" not in _command(pid)]

    def down(self) -> None:
        """`down`, and what it promises: no process of the stack alive (gunicorn's workers,
        every daemon with a pid file in the run dir, a private PostgreSQL), no port of it
        answering, and `status` saying so."""
        files = [path.read_text().split() for path in self.layout.root.rglob("*.pid")]
        running = [int(words[0]) for words in files if words and alive(int(words[0]))]
        master = read_pid(self.layout.gunicorn_pidfile)
        running += children(master) if master else []
        commands = {pid: _command(pid) for pid in running}
        settings = self.native.settings
        ports = [self.http_port, self.ops_port, settings.prometheus_port]
        ports.append(settings.nginx_exporter_port)
        ports += [
            int(self.env[name]) for name in ("POSTGRES_PORT", "PGBOUNCER_PORT") if name in self.env
        ]
        self.run("down")
        # A worker the master left behind gets SIGKILL as `down` ends: gone a moment later.
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [commands[pid] for pid in running if alive(pid)]
        assert not left, f"down left processes running: {left}"
        answering = [port for port in ports if port_open(port)]
        assert not answering, f"down left ports answering: {answering}"
        assert self.run("status", check=False).returncode != 0

    def app_log(self) -> list[dict[str, object]]:
        """Every JSON line of the app's log (app, uvicorn, gunicorn)."""
        return read_json_lines(self.layout.app_log)

    async def logged(self, request_ids: Iterable[str]) -> list[dict[str, object]]:
        """The app's log once it holds the access line of each of these requests."""
        return await logged_requests(self.layout.app_log, request_ids)

    async def access_pids(self, request_ids: set[str]) -> Counter[int]:
        """How many of these requests each worker pid served, from the access lines."""
        pids: Counter[int] = Counter()
        for line in await self.logged(request_ids):
            if line.get("event") == "request" and line.get("request_id") in request_ids:
                pids[int(str(line["pid"]))] += 1
        return pids


def _command(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return f"pid {pid}"


def read_json_lines(path: Path) -> list[dict[str, object]]:
    """Parse a JSON-lines file; a line that is not JSON fails the test."""
    lines = []
    # JSON Lines ends a line at "\n" only: a path holding U+0085 or U+2028 is valid JSON that
    # str.splitlines() would cut in two.
    for number, raw in enumerate(path.read_text().split("\n"), start=1):
        if raw.strip():
            try:
                lines.append(json.loads(raw))
            except ValueError as exc:
                msg = f"{path.name}:{number} is not JSON: {raw[:200]!r}"
                raise AssertionError(msg) from exc
    return lines


# Seconds a log may take to hold a request's access line.
LOGGED_WITHIN = 10


async def logged_requests(path: Path, request_ids: Iterable[str]) -> list[dict[str, object]]:
    """Every line of the JSON-lines log at `path`, once it holds the access line (event
    `request`) of each of these requests: a worker writes its line just after the response,
    nginx buffers its own for up to a second (nginx.conf). Fails after LOGGED_WITHIN s."""
    wanted = set(request_ids)
    deadline = time.monotonic() + LOGGED_WITHIN
    while True:
        lines = read_json_lines(path)
        seen = {line.get("request_id") for line in lines if line.get("event") == "request"}
        if wanted <= seen:
            return lines
        if time.monotonic() > deadline:
            missing = wanted - seen
            msg = f"{len(missing)} requests have no line in {path.name} after {LOGGED_WITHIN} s"
            raise AssertionError(f"{msg}: {sorted(missing)[:10]}")
        await asyncio.sleep(0.05)


async def nginx_access_lines(path: Path, request_ids: set[str]) -> list[dict[str, object]]:
    """nginx's access lines of these requests, once every one of them is in `path`."""
    lines = await logged_requests(path, request_ids)
    return [line for line in lines if line.get("request_id") in request_ids]


@contextmanager
def running_stack(
    database: URL | None, workers: int = 2, extra_env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """Start a stack on free ports in a fresh run dir; stop it and check nothing is left.

    Without `database` the stack starts its own private cluster in the run dir, as `make up`
    does when DATABASE_URL is not set.
    """
    # Not under pytest's tmp dir: that is private to root, and nginx's workers (an
    # unprivileged user) must reach the gunicorn socket.
    run_dir = Path(tempfile.mkdtemp(prefix="notes-stack-"))
    run_dir.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    private = database is None
    if database is None:
        postgres_port = free_port()
        env["POSTGRES_PORT"] = str(postgres_port)
        # The private cluster's owner, whose password `up` generates (filled in below).
        database = make_url(f"postgresql+asyncpg://notes_owner@127.0.0.1:{postgres_port}/notes")
    else:
        env["DATABASE_URL"] = database.render_as_string(hide_password=False)
    settings = StackSettings(
        run_dir=run_dir,
        http_port=free_port(),
        ops_port=free_port(),
        prometheus_port=free_port(),
        nginx_exporter_port=free_port(),
        # Its own, though few stacks run PgBouncer: two files' stacks may run at once.
        pgbouncer_port=int((extra_env or {}).get("PGBOUNCER_PORT") or free_port()),
    )
    # A scrape a second: the loads of the tests last seconds, and what they check in
    # Prometheus (a sweep's steps, the dashboard's panels) waits for two scrapes.
    env.update(
        RUN_DIR=str(run_dir),
        WEB_CONCURRENCY=str(workers),
        ENVIRONMENT="test",
        PROMETHEUS_SCRAPE_INTERVAL="1",
    )
    env.update(extra_env or {})
    env.update(
        HTTP_PORT=str(settings.http_port),
        OPS_PORT=str(settings.ops_port),
        PROMETHEUS_PORT=str(settings.prometheus_port),
        NGINX_EXPORTER_PORT=str(settings.nginx_exporter_port),
        PGBOUNCER_PORT=str(settings.pgbouncer_port),
    )
    stack = Stack(NativeStack(RunLayout(run_dir), settings), env, database)
    try:
        stack.run("up")
        if private:
            stack.database = stack.native.secrets.with_password(database)
        yield stack
        stack.down()  # every stack of the suite ends by proving `down`
    finally:
        stack.run("down", check=False)
        shutil.rmtree(run_dir, ignore_errors=True)


# The one status each request of the load expects: anything else fails the test.
EXPECTED_STATUS = {"GET": 200, "POST": 201, "PATCH": 200}
# Answers after which a write may be retried with the same Idempotency-Key: the note was
# created at most once, whether or not the first attempt reached the database.
RETRYABLE = {502, 503, 504}
WRITE_ATTEMPTS = 8


@dataclass
class LoadResult:
    """What a load run saw: the final outcome of each request (a status, or the name of the
    exception), what each POST meant to create, and how many attempts were retried."""

    outcomes: list[tuple[str, int | str]] = field(default_factory=list)
    request_ids: set[str] = field(default_factory=set)
    # The text of every note a client meant to create, by the Idempotency-Key it used.
    intended: dict[str, str] = field(default_factory=dict)
    retries: Counter[int | str] = field(default_factory=Counter)

    def counts(self) -> Counter[tuple[str, int | str]]:
        """How many requests of each method ended with each outcome."""
        return Counter(self.outcomes)

    def unexpected(self) -> Counter[tuple[str, int | str]]:
        """Outcomes other than the one status each request expects."""
        return Counter(
            (method, outcome)
            for method, outcome in self.outcomes
            if outcome != EXPECTED_STATUS[method]
        )


class ConcurrentLoad:
    """A pool of concurrent clients, each sending one request after another (`one`) until a
    total is reached or `stop()`; what each saw goes into `result`."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.base_url = base_url
        self.concurrency = concurrency
        self.result = LoadResult()
        self._stop = asyncio.Event()

    async def prepare(self) -> None:
        """What the requests need before they start (nothing by default)."""

    async def one(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        """Send one request and record its outcome."""
        raise NotImplementedError

    async def run(self, total: int | None = None) -> LoadResult:
        """Send `total` requests (or until `stop()`), `concurrency` at a time."""
        await self.prepare()
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=30) as client:
            sent = 0

            async def client_loop(seed: int) -> None:
                nonlocal sent
                rng = random.Random(seed)
                while not self._stop.is_set() and (total is None or sent < total):
                    sent += 1
                    await self.one(client, rng)

            await asyncio.gather(*(client_loop(seed) for seed in range(self.concurrency)))
        return self.result

    def stop(self) -> None:
        """Ask the clients to finish their current request and stop."""
        self._stop.set()


class Load(ConcurrentLoad):
    """A mixed read/write load of the notes API.

    Every write carries an Idempotency-Key and is retried with it, up to WRITE_ATTEMPTS times,
    when the answer says the write may not have happened (502, 503, 504, or no answer): so
    even across a worker killed mid-request, each intended note is created exactly once.
    """

    def __init__(self, base_url: str, concurrency: int) -> None:
        super().__init__(base_url, concurrency)
        self.note_ids: list[int] = []

    async def _write(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        body: dict[str, object],
        request_id: str,
    ) -> tuple[int | str, httpx.Response | None]:
        """Send a write with a fresh Idempotency-Key, retried with it while that is safe."""
        key = uuid.uuid4().hex
        if method == "POST":
            self.result.intended[key] = str(body["text"])
        outcome: int | str = "not sent"
        response = None
        for attempt in range(WRITE_ATTEMPTS):
            if attempt:
                self.result.retries[outcome] += 1
                await asyncio.sleep(0.05 * 2**attempt)
            try:
                response = await client.request(
                    method,
                    url,
                    json=body,
                    headers={"Idempotency-Key": key, "X-Request-ID": request_id},
                )
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
                continue
            outcome = response.status_code
            if outcome not in RETRYABLE:
                break
        return outcome, response

    async def one(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        request_id = uuid.uuid4().hex
        self.result.request_ids.add(request_id)
        headers = {"X-Request-ID": request_id}
        roll = rng.random()
        method = "GET"
        outcome: int | str
        try:
            if roll < 0.2 or not self.note_ids:
                method = "POST"
                body: dict[str, object] = {"text": f"load {request_id}"}
                outcome, response = await self._write(
                    client, method, "/api/v1/notes", body, request_id
                )
                if outcome == 201 and response is not None:
                    self.note_ids.append(response.json()["id"])
            elif roll < 0.3:
                method = "PATCH"
                url = f"/api/v1/notes/{rng.choice(self.note_ids)}"
                outcome, _ = await self._write(client, method, url, {"completed": True}, request_id)
            elif roll < 0.4:
                params = {"limit": 10}
                response = await client.get("/api/v1/notes", params=params, headers=headers)
                outcome = response.status_code
            else:
                note = rng.choice(self.note_ids)
                outcome = (await client.get(f"/api/v1/notes/{note}", headers=headers)).status_code
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        self.result.outcomes.append((method, outcome))


class TimedLoad(Load):
    """The mixed load, with when each request was sent and answered (wall clock: comparable
    with the engine's and the runner's own times), one span beside each outcome."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        super().__init__(base_url, concurrency)
        self.spans: list[tuple[float, float]] = []

    async def one(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        sent = time.time()
        await super().one(client, rng)
        self.spans.append((sent, time.time()))  # beside its outcome: nothing ran in between

    def p99(self, start: float, end: float) -> float:
        """The 99th percentile of the durations of the requests answered in [start, end)."""
        durations = [done - sent for sent, done in self.spans if start <= done < end]
        assert len(durations) >= 100, f"too few requests to tell: {len(durations)}"
        return statistics.quantiles(durations, n=100)[98]


async def notes_by_text(database: URL, texts: Iterable[str]) -> Counter[str]:
    """How many notes the database holds with each of these texts (`database` may be
    PgBouncer's: the statement is prepared unnamed)."""
    connection = await asyncpg.connect(asyncpg_dsn(database), statement_cache_size=0)
    try:
        rows = await connection.fetch(
            "SELECT text, count(*) AS n FROM notes WHERE text = ANY($1) GROUP BY text", list(texts)
        )
    finally:
        await connection.close()
    return Counter({row["text"]: row["n"] for row in rows})


async def answered(
    load: ConcurrentLoad, count: int, what: str = "too few answers", seconds: float = 60
) -> None:
    """Wait until the load has `count` outcomes (an error is one too), `seconds` at most."""
    deadline = asyncio.get_running_loop().time() + seconds
    while len(load.result.outcomes) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{what}: {load.result.counts()}"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def background_load(
    base_url: str,
    concurrency: int = 20,
    make: Callable[[str, int], ConcurrentLoad] = Load,
) -> AsyncIterator[ConcurrentLoad]:
    """Keep a load running for the duration of the block: the block starts once the load has
    had as many answers as it has clients, and the load stops once twice as many more came
    after it (those in flight when it ended, then as many sent after): requests were in flight
    throughout, and the stack served after the block."""
    load = make(base_url, concurrency)
    task = asyncio.create_task(load.run())
    try:
        await answered(load, concurrency, "the load never got going")
        yield load
        after = len(load.result.outcomes) + 2 * concurrency
        await answered(load, after, "no answers after the block")
    finally:
        load.stop()
        await task
