"""The real stack for end-to-end tests: started with deploy/native/stack.py, driven by load."""

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.engine import URL

from deploy.native.stack import children
from tests.postgres import ROOT, free_port

STACK = ROOT / "deploy" / "native" / "stack.py"


@dataclass
class Stack:
    """One running stack: its ports, run dir and environment."""

    run_dir: Path
    http_port: int
    ops_port: int
    prometheus_port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a stack.py command against this stack."""
        result = subprocess.run(
            [sys.executable, str(STACK), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            msg = f"stack.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
            raise AssertionError(msg)
        return result

    async def arun(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`run` without blocking the event loop (load keeps flowing meanwhile)."""
        return await asyncio.to_thread(self.run, *args, check=check)

    def master_pid(self) -> int:
        return int((self.run_dir / "gunicorn.pid").read_text())

    def worker_pids(self) -> list[int]:
        """The live workers of the current master."""
        return children(self.master_pid())

    def app_log(self) -> list[dict[str, object]]:
        """Every JSON line of the app's log (app, uvicorn, gunicorn)."""
        return read_json_lines(self.run_dir / "logs" / "app.log")

    def access_pids(self, request_ids: set[str]) -> Counter[int]:
        """How many of these requests each worker pid served, from the access lines."""
        pids: Counter[int] = Counter()
        for line in self.app_log():
            if line.get("event") == "request" and line.get("request_id") in request_ids:
                pids[int(str(line["pid"]))] += 1
        return pids


def read_json_lines(path: Path) -> list[dict[str, object]]:
    """Parse a JSON-lines file; a line that is not JSON fails the test."""
    lines = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if raw.strip():
            try:
                lines.append(json.loads(raw))
            except ValueError as exc:
                msg = f"{path.name}:{number} is not JSON: {raw[:200]!r}"
                raise AssertionError(msg) from exc
    return lines


@contextmanager
def running_stack(
    database: URL, workers: int = 2, extra_env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """Start a stack on free ports in a fresh run dir; stop it and check nothing is left."""
    # Not under pytest's tmp dir: that is private to root, and nginx's workers (an
    # unprivileged user) must reach the gunicorn socket.
    run_dir = Path(tempfile.mkdtemp(prefix="notes-stack-"))
    run_dir.chmod(0o755)
    stack = Stack(
        run_dir=run_dir,
        http_port=free_port(),
        ops_port=free_port(),
        prometheus_port=free_port(),
        env={
            **os.environ,
            "RUN_DIR": str(run_dir),
            "DATABASE_URL": database.render_as_string(hide_password=False),
            "WEB_CONCURRENCY": str(workers),
            "ENVIRONMENT": "test",
            **(extra_env or {}),
        },
    )
    stack.env["HTTP_PORT"] = str(stack.http_port)
    stack.env["OPS_PORT"] = str(stack.ops_port)
    stack.env["PROMETHEUS_PORT"] = str(stack.prometheus_port)
    stack.env["NGINX_EXPORTER_PORT"] = str(free_port())
    try:
        stack.run("up")
        yield stack
    finally:
        stack.run("down", check=False)
        shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class LoadResult:
    """What a load run saw: a status per request (or the exception), by method."""

    outcomes: list[tuple[str, int | str]] = field(default_factory=list)
    request_ids: set[str] = field(default_factory=set)

    def failures(self, methods: set[str] | None = None) -> list[tuple[str, int | str]]:
        """Requests that got an exception or a status no correct server would give."""
        return [
            (method, outcome)
            for method, outcome in self.outcomes
            if (methods is None or method in methods)
            and not (isinstance(outcome, int) and outcome < 500)
        ]


class Load:
    """A mixed read/write load of the notes API, as a pool of concurrent clients."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.base_url = base_url
        self.concurrency = concurrency
        self.result = LoadResult()
        self.note_ids: list[int] = []
        self._stop = asyncio.Event()

    async def _one(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        request_id = uuid.uuid4().hex
        self.result.request_ids.add(request_id)
        headers = {"X-Request-ID": request_id}
        roll = rng.random()
        method = "GET"
        try:
            if roll < 0.2 or not self.note_ids:
                method = "POST"
                response = await client.post(
                    "/api/v1/notes", json={"text": f"load {request_id}"}, headers=headers
                )
                if response.status_code == 201:
                    self.note_ids.append(response.json()["id"])
            elif roll < 0.3:
                method = "PATCH"
                note = rng.choice(self.note_ids)
                response = await client.patch(
                    f"/api/v1/notes/{note}", json={"completed": True}, headers=headers
                )
            elif roll < 0.4:
                response = await client.get("/api/v1/notes", params={"limit": 10}, headers=headers)
            else:
                note = rng.choice(self.note_ids)
                response = await client.get(f"/api/v1/notes/{note}", headers=headers)
            self.result.outcomes.append((method, response.status_code))
        except httpx.HTTPError as exc:
            self.result.outcomes.append((method, type(exc).__name__))

    async def run(self, total: int | None = None) -> LoadResult:
        """Send `total` requests (or until `stop()`), `concurrency` at a time."""
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=30) as client:
            sent = 0

            async def client_loop(seed: int) -> None:
                nonlocal sent
                rng = random.Random(seed)
                while not self._stop.is_set() and (total is None or sent < total):
                    sent += 1
                    await self._one(client, rng)

            await asyncio.gather(*(client_loop(seed) for seed in range(self.concurrency)))
        return self.result

    def stop(self) -> None:
        """Ask the clients to finish their current request and stop."""
        self._stop.set()


@asynccontextmanager
async def background_load(base_url: str, concurrency: int = 20) -> AsyncIterator[Load]:
    """Keep a load running for the duration of the block (after a short warm-up)."""
    load = Load(base_url, concurrency)
    task = asyncio.create_task(load.run())
    await asyncio.sleep(1)
    try:
        yield load
    finally:
        await asyncio.sleep(1)
        load.stop()
        await task
