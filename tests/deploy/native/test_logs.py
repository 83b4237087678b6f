"""Logs that cannot fill the disk, and lose nothing: a stack whose rotator rotates its logs at a
small size, under load; Prometheus's retention size; the free disk the alert watches."""

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy.engine import URL

from deploy.native.processes import read_pid
from tests.metrics import parse, value
from tests.postgres import fresh_database
from tests.stack import Load, Stack, read_json_lines, running_stack

ROTATE_SIZE = 128 * 1024
KEEP = 200  # every rotated file kept: the test counts the lines of all of them


@pytest.fixture(scope="module")
def rotating_stack(pg_server: URL) -> Iterator[Stack]:
    env = {"LOG_ROTATE_SIZE": "128K", "LOG_KEEP": str(KEEP)}
    with fresh_database(pg_server) as url, running_stack(url, workers=2, extra_env=env) as stack:
        yield stack


def every_file_of(log: Path) -> list[Path]:
    """A log and its rotated files, oldest first."""
    rotated = sorted(
        log.parent.glob(f"{log.name}.*"), key=lambda path: -int(path.suffix.lstrip("."))
    )
    return [*rotated, log]


def request_ids_logged(log: Path, logger: str | None = None) -> Counter[str]:
    """How many lines of `log` and its rotated files carry each request id (from `logger`)."""
    found: Counter[str] = Counter()
    for path in every_file_of(log):
        for line in read_json_lines(path):
            if "request_id" in line and (logger is None or line.get("logger") == logger):
                found[str(line["request_id"])] += 1
    return found


async def test_under_load_every_log_stays_bounded_and_no_line_is_lost(
    rotating_stack: Stack,
) -> None:
    layout = rotating_stack.layout
    started = time.monotonic()
    result = await Load(rotating_stack.url, concurrency=20).run(total=3000)
    seconds = time.monotonic() - started
    assert not result.unexpected(), result.counts()
    assert not result.retries, result.retries
    await asyncio.sleep(2)  # the rotator's last check, and the last lines written

    access, app = layout.nginx_access_log, layout.app_log
    # Rotated several times each while the load ran: nginx's and gunicorn's reopen was used.
    assert len(every_file_of(access)) >= 3, every_file_of(access)
    assert len(every_file_of(app)) >= 3, every_file_of(app)
    # Bounded: a file grows past LOG_ROTATE_SIZE by what is written to it in the second
    # between two checks at most (its log's rate on this run, with a second of slack for the
    # rotator's own turn on a busy machine).
    for name in sorted({path.name.split(".log")[0] for path in layout.logs.iterdir()}):
        files = every_file_of(layout.logs / f"{name}.log")
        sizes = {path.name: path.stat().st_size for path in files}
        rate = sum(sizes.values()) / seconds
        bound = ROTATE_SIZE + 2 * rate
        print(f"\n{name}: {sum(sizes.values())} bytes in {len(files)} files over "
              f"{seconds:.1f}s, largest {max(sizes.values())} (bound {bound:.0f})")  # fmt: skip
        assert max(sizes.values()) <= bound, sizes

    # One for one: each request's nginx line and app access line, across every file.
    sent = result.request_ids
    for log, logger in ((access, None), (app, "service.access")):
        logged = request_ids_logged(log, logger)
        assert {request for request in logged if request in sent} == sent, log.name
        assert {logged[request] for request in sent} == {1}, log.name


async def test_make_rotate_logs_rotates_now_and_the_writers_follow(rotating_stack: Stack) -> None:
    layout = rotating_stack.layout
    async with httpx.AsyncClient(base_url=rotating_stack.url) as client:
        before = await client.get("/api/v1/notes", headers={"X-Request-ID": "before-rotation"})
    assert before.status_code == 200
    await asyncio.sleep(1.5)  # nginx writes its access lines a second late at most
    result = rotating_stack.run("rotate-logs")
    assert "app.log" in result.stderr + result.stdout
    for log in (layout.app_log, layout.nginx_access_log):
        assert "before-rotation" in log.with_name(f"{log.name}.1").read_text(), log.name
        assert "before-rotation" not in log.read_text(), log.name
    async with httpx.AsyncClient(base_url=rotating_stack.url) as client:
        answer = await client.get("/api/v1/notes", headers={"X-Request-ID": "after-rotation"})
    assert answer.status_code == 200
    deadline = time.monotonic() + 10  # nginx writes its access lines a second late at most
    logs = (layout.app_log, layout.nginx_access_log)
    while time.monotonic() < deadline:
        if all("after-rotation" in log.read_text() for log in logs):
            break
        await asyncio.sleep(0.1)
    # The new files, not the renamed ones: gunicorn's workers and nginx reopened.
    assert "after-rotation" in layout.app_log.read_text()
    assert "after-rotation" in layout.nginx_access_log.read_text()


async def test_prometheus_keeps_a_bounded_size_and_the_free_disk_is_watched(
    rotating_stack: Stack,
) -> None:
    pid = read_pid(rotating_stack.layout.pidfile("prometheus"))
    assert pid is not None
    assert "--storage.tsdb.retention.size=1GB" in psutil.Process(pid).cmdline()
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{rotating_stack.ops_url}/metrics")).text
    samples = parse(text)
    path = str(rotating_stack.layout.root)
    free = value(samples, "stack_disk_free_bytes", path=path)
    size = value(samples, "stack_disk_size_bytes", path=path)
    assert 0 < free <= size
