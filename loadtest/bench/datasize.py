"""Every endpoint of the notes API as the table grows: throughput and p99 at 10 thousand, 1
million and 10 million notes, side by side in one run, with a gate on throughput.

    uv run python -m loadtest.bench.datasize [--sizes 10000 1000000 10000000] [--rounds 5]
        [--seconds 2] [--warmup-seconds 2]

One database per size (migrated, grown with `make seed`'s function, then vacuumed and
analyzed), one uvicorn worker of the service as deployed on each (endpoints.py's), and wrk
(one thread, 32 connections) loading one endpoint of one size at a time. A round visits every
endpoint and, for each, every size back to back (the sizes' order reversed every other round):
the figures of one endpoint at two sizes are measured seconds apart, under the same noise.
Round 0 warms up and is not counted. Reads by id and cursors pick random notes of the whole
table. The writes (POST, PATCH, PUT, DELETE) leave each table as it was: the notes they made
are deleted after the run, and the table and its counts vacuumed, as autovacuum would (DELETE
deletes notes inserted for it just before, past the seeded ones).

Printed: each run (with the CPU a request cost the worker and PostgreSQL), then one row per
endpoint: the medians of its rounds at each size; the median of the round-by-round ratios of
the largest size to the smallest for throughput, p99 and CPU per request; every status wrk
counted (any non-2xx stops the benchmark).

The gate is on throughput: exit 1 when any endpoint keeps less than 1/1.5 of its throughput at
the smallest size at the largest. p99 is printed, not gated: at 32 connections on one worker
it is mostly queueing, and on this shared 2-core machine a neighbour's burst during a run of
seconds moves it by more than 1.5x. DATABASE_URL names a server; the benchmark makes and
drops its own databases there.
"""

import argparse
import asyncio
import dataclasses
import os
import random
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import asyncpg

from deploy.native.processes import free_port
from loadtest.bench.endpoints import service_contenders, serving
from loadtest.bench.harness import (
    BenchDatabase,
    Round,
    bench_database,
    load_average,
    measure,
    median_ratio,
)
from loadtest.bench.stack import backends
from service.notes.router import encode_cursor

MAX_SLOWDOWN = 1.5
NOTES = "/api/v1/notes"
# Requests a run cycles through per second of it, picked afresh for each run: more than one
# worker answers, so that a read by id seldom meets the same note twice in a run.
PICKS_PER_SECOND = 5_000
# Notes inserted for a DELETE run, per second of it: more than one worker deletes, with room
# for a faster host (6,000 ran out on 2026-12-07, when a worker deleted 6,700 a second: a
# note deleted twice answers 404, which stops the benchmark).
DELETES_PER_SECOND = 20_000

# Cycles through the requests in BENCH_REQUESTS (one `METHOD<tab>path<tab>body` a line), built
# once, and counts the answers' statuses; at the end writes them to BENCH_STATUSES.
SCRIPT = """
local requests, next = {}, 0
statuses = {}
for line in io.lines(os.getenv("BENCH_REQUESTS")) do
  local method, path, body = line:match("^(%u+)\\t([^\\t]*)\\t(.*)$")
  local headers = {}
  if body == "" then body = nil else headers["Content-Type"] = "application/json" end
  requests[#requests + 1] = wrk.format(method, path, headers, body)
end
request = function()
  next = next % #requests + 1
  return requests[next]
end
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end
local threads = {}
setup = function(thread) threads[#threads + 1] = thread end
done = function()
  local file = io.open(os.getenv("BENCH_STATUSES"), "w")
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      file:write(status .. " " .. count .. "\\n")
    end
  end
  file:close()
end
"""


@dataclass(frozen=True)
class Size:
    """One size under test: its database and the port and pid of the worker serving it."""

    notes: int
    database: BenchDatabase
    port: int
    worker: int


# The requests of one run of so many seconds at one size: (method, path, body) each.
Requests = Callable[[Size, int, random.Random], list[tuple[str, str, str]]]


def _ids(size: Size, seconds: int, rng: random.Random) -> list[int]:
    return [rng.randint(1, size.notes) for _ in range(PICKS_PER_SECOND * seconds)]


def _reads(path: Callable[[int], str]) -> Requests:
    return lambda size, seconds, rng: [("GET", path(note), "") for note in _ids(size, seconds, rng)]


def _once(method: str, path: str, body: str = "") -> Requests:
    return lambda size, seconds, rng: [(method, path, body)]


def _changes(method: str, body: Callable[[str], str]) -> Requests:
    return lambda size, seconds, rng: [
        (method, f"{NOTES}/{note}", body(rng.choice(["true", "false"])))
        for note in _ids(size, seconds, rng)
    ]


async def _sql(dsn: str, statement: str, *arguments: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(statement, *arguments))
    finally:
        await connection.close()


def _deletes(size: Size, seconds: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """DELETEs of notes inserted now, past the seeded ones: more than a run deletes (the
    rest go with the other notes the benchmark added, `_restored`)."""
    rows = asyncio.run(
        _sql(
            size.database.dsn,
            "INSERT INTO notes (text) SELECT 'to be deleted' FROM generate_series(1, $1) "
            "RETURNING id",
            DELETES_PER_SECOND * seconds,
        )
    )
    return [("DELETE", f"{NOTES}/{row['id']}", "") for row in rows]


ENDPOINTS: dict[str, Requests] = {
    "GET /notes/{id}": _reads(lambda note: f"{NOTES}/{note}"),
    "GET /notes, first page": _once("GET", f"{NOTES}?limit=20"),
    "GET /notes, random cursor": _reads(lambda note: f"{NOTES}?cursor={encode_cursor(note)}"),
    "GET /notes?completed=true, first page": _once("GET", f"{NOTES}?completed=true"),
    "GET /notes?completed=true, random cursor": _reads(
        lambda note: f"{NOTES}?completed=true&cursor={encode_cursor(note)}"
    ),
    "GET /notes/stats": _once("GET", f"{NOTES}/stats"),
    "POST /notes": _once("POST", NOTES, '{"text": "a note written by the benchmark"}'),
    "PATCH /notes/{id}": _changes("PATCH", lambda flag: f'{{"completed": {flag}}}'),
    "PUT /notes/{id}": _changes(
        "PUT", lambda flag: f'{{"text": "replaced by the benchmark", "completed": {flag}}}'
    ),
    "DELETE /notes/{id}": _deletes,
}
WRITES = {"POST /notes", "PATCH /notes/{id}", "PUT /notes/{id}", "DELETE /notes/{id}"}


@dataclass
class Figures:
    """Every counted run, by endpoint then by size, and every status each endpoint answered."""

    sizes: list[int]
    rounds: dict[str, dict[int, list[Round]]] = field(default_factory=dict)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)

    def add(self, endpoint: str, size: int, one: Round, statuses: Counter[int]) -> None:
        """Count one run."""
        self.rounds.setdefault(endpoint, {}).setdefault(size, []).append(one)
        self.statuses.setdefault(endpoint, Counter()).update(statuses)

    def ratio(self, endpoint: str, value: Callable[[Round], float]) -> float:
        """The median of the round-by-round ratios of `value` at the largest size to the
        smallest."""
        by_size = self.rounds[endpoint]
        return median_ratio(
            [value(one) for one in by_size[self.sizes[-1]]],
            [value(one) for one in by_size[self.sizes[0]]],
        )


def _restored(size: Size) -> None:
    """The notes the benchmark added deleted, and what its writes left vacuumed."""
    asyncio.run(_sql(size.database.dsn, "DELETE FROM notes WHERE id > $1", size.notes))
    asyncio.run(_sql(size.database.dsn, "VACUUM notes, note_count_deltas"))


def _run(endpoint: str, size: Size, seconds: int, rng: random.Random) -> tuple[Round, Counter[int]]:
    """One wrk run of `endpoint` against `size`'s worker: its figures and statuses."""
    requests = ENDPOINTS[endpoint](size, seconds, rng)
    with tempfile.TemporaryDirectory(prefix="bench-datasize-") as directory:
        lines, statuses = Path(directory) / "requests.tsv", Path(directory) / "statuses"
        lines.write_text("".join(f"{m}\t{path}\t{body}\n" for m, path, body in requests))
        one = measure(
            size.port,
            partial(_parts, size),
            script=SCRIPT,
            env={"BENCH_REQUESTS": str(lines), "BENCH_STATUSES": str(statuses)},
            seconds=seconds,
        )
        counted: Counter[int] = Counter()
        for line in statuses.read_text().split("\n"):
            if line:
                status, count = line.split()
                counted[int(status)] += int(count)
    if endpoint in WRITES:
        _restored(size)
    return one, counted


def _parts(size: Size) -> dict[str, list[int]]:
    return {"worker": [size.worker], "PostgreSQL": backends(size.database)}


def _server_cpu_ms(one: Round) -> float:
    """The CPU a request cost the worker and PostgreSQL together, in milliseconds."""
    return (one.cpu_ms("worker") or 0.0) + (one.cpu_ms("PostgreSQL") or 0.0)


def measure_sizes(sizes: list[Size], *, rounds: int, seconds: int, warmup_seconds: int) -> Figures:
    """Round 0 (`warmup_seconds` a run, not counted; none at 0), then `rounds` rounds: in
    each, every endpoint on every size, back to back."""
    figures = Figures([size.notes for size in sizes])
    rng = random.Random(21)  # noqa: S311 (which notes a run reads, not a secret)
    for number in range(0 if warmup_seconds else 1, rounds + 1):
        order = sizes if number % 2 else sizes[::-1]
        for endpoint in ENDPOINTS:
            for size in order:
                one, statuses = _run(endpoint, size, seconds if number else warmup_seconds, rng)
                print(
                    f"round {number} {endpoint:42s} {size.notes:>11,} notes "
                    f"{one.rate:7.0f} req/s  p99 {one.p99_ms:6.1f} ms  CPU ms/request: "
                    f"worker {one.cpu_ms('worker') or 0:.3f}, "
                    f"PostgreSQL {one.cpu_ms('PostgreSQL') or 0:.3f}",
                    flush=True,
                )
                if number:
                    figures.add(endpoint, size.notes, one, statuses)
    return figures


@contextmanager
def sized(notes: list[int]) -> Iterator[list[Size]]:
    """A database grown to each size, and a worker of the service as deployed serving each,
    until the block ends. The sizes are made side by side, a thread each: most of it is
    waiting for Alembic, PostgreSQL and the worker's start."""
    with ExitStack() as stack, ThreadPoolExecutor(len(notes)) as pool:

        def made(count: int) -> Size:
            database = stack.enter_context(bench_database(count))
            # As autovacuum would leave it: not a table whose first readers must set every
            # row's hint bits.
            asyncio.run(_sql(database.dsn, "VACUUM notes"))
            env = {**os.environ, "DATABASE_URL": database.url, "LOG_LEVEL": "INFO"}
            env["ENVIRONMENT"] = "test"
            metrics = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-metrics-"))
            deployed, _ = service_contenders(env, metrics)
            contender = dataclasses.replace(deployed, label=database.name, port=free_port())
            worker = stack.enter_context(serving(contender))
            return Size(count, database, contender.port, worker.pid)

        yield list(pool.map(made, notes))


def table(figures: Figures) -> list[str]:
    """The Markdown table: one row per endpoint, throughput then p99 at each size and the
    ratio of the largest to the smallest, that of the CPU a request cost the worker and
    PostgreSQL together, and the statuses answered."""
    sizes = figures.sizes
    heads = [f"req/s at {size:,}" for size in sizes] + ["req/s, largest / smallest"]
    heads += [f"p99 ms at {size:,}" for size in sizes] + ["p99, largest / smallest"]
    heads += ["CPU ms/request, largest / smallest", "statuses"]
    lines = ["| endpoint | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for endpoint, by_size in figures.rounds.items():
        rates = [f"{statistics.median(one.rate for one in by_size[s]):,.0f}" for s in sizes]
        p99s = [f"{statistics.median(one.p99_ms for one in by_size[s]):.1f}" for s in sizes]
        statuses = ", ".join(f"{s}: {n:,}" for s, n in sorted(figures.statuses[endpoint].items()))
        cells = [
            *rates,
            f"{figures.ratio(endpoint, lambda one: one.rate):.2f}",
            *p99s,
            f"{figures.ratio(endpoint, lambda one: one.p99_ms):.2f}",
            f"{figures.ratio(endpoint, _server_cpu_ms):.2f}",
            statuses,
        ]
        lines.append(f"| {endpoint} | " + " | ".join(cells) + " |")
    return lines


def gate(figures: Figures) -> list[str]:
    """One line per endpoint, `ok` or `FAILED`: does it keep 1/1.5 of its throughput at the
    smallest size at the largest (the median of the round-by-round ratios)?"""
    lines = []
    for endpoint in figures.rounds:
        ratio = figures.ratio(endpoint, lambda one: one.rate)
        verdict = "ok" if ratio >= 1 / MAX_SLOWDOWN else "FAILED"
        lines.append(
            f"gate: {verdict}: {endpoint} keeps {ratio:.2f} of its throughput at "
            f"{figures.sizes[-1]:,} notes against {figures.sizes[0]:,} (at least "
            f"{1 / MAX_SLOWDOWN:.2f})"
        )
    return lines


def main() -> None:
    """Command line: grow the tables, the rounds, the table, the gate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--warmup-seconds", type=int, default=2, help="0: no warm-up round")
    args = parser.parse_args()
    notes = sorted(set(args.sizes))
    if len(notes) < 2 or notes[0] < 1 or args.rounds < 1 or args.seconds < 1:
        parser.error("two sizes of at least one note, one round and one second at least")
    with sized(notes) as sizes:
        print(f"load average before: {load_average()}", flush=True)
        figures = measure_sizes(
            sizes, rounds=args.rounds, seconds=args.seconds, warmup_seconds=args.warmup_seconds
        )
        print(f"load average after: {load_average()}")
    print("\n" + "\n".join(table(figures)) + "\n")
    verdicts = gate(figures)
    print("\n".join(verdicts))
    if any("FAILED" in verdict for verdict in verdicts):
        sys.exit(1)


if __name__ == "__main__":
    main()
