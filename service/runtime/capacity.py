"""Capacity planning: the CPUs a process may use, the default worker count, and the
database connection budget that every worker count must fit.

    python -m service.runtime.capacity check --workers N     exit 1 if N workers would not fit
    python -m service.runtime.capacity cpus                  print the usable CPUs
"""

import argparse
import asyncio
import math
import os
import sys
from dataclasses import dataclass

import asyncpg

from service.config import BudgetSettings, Settings, load
from service.database.urls import asyncpg_dsn
from service.runtime.cgroups import cpu_limit

# Connections kept free beside the workers' pools: one for a migration run, the rest for an
# operator's psql, monitoring and a backup.
MIGRATION_CONNECTIONS = 1
SPARE_CONNECTIONS = 4
# Never fewer workers: one being recycled or restarted must not leave the socket without one
# that accepts.
MIN_WORKERS = 2


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota.

    `os.cpu_count()` counts the host's CPUs and ignores both, so a container limited to two
    CPUs on a 64-core host would start 64 workers.
    """
    return cpus_within(len(os.sched_getaffinity(0)), cpu_limit())


def cpus_within(cpus: int, quota: float | None) -> int:
    """Of `cpus` CPUs, those a CPU quota of `quota` cores lets a process use (rounded up: a
    quota of 1.5 still runs two workers' event loops, each part of the time)."""
    return cpus if quota is None else min(cpus, max(1, math.ceil(quota)))


def default_workers(cpus: int | None = None) -> int:
    """One worker per usable CPU (this process's, or `cpus`), and never fewer than two.

    A uvicorn worker is one event loop that keeps one core busy; more workers than cores add
    context switches, memory and database connections, not throughput (`make sweep` measures
    this). Two at least, so a worker being recycled or restarted never leaves the socket
    without one that accepts.
    """
    return max(MIN_WORKERS, usable_cpus() if cpus is None else cpus)


class BudgetExceededError(RuntimeError):
    """The workers' pools would not fit the database server's connection limit."""


# How the budget names the connections a worker opens when nothing measured them.
DECLARED_POOLS = "DB_POOL_SIZE + DB_MAX_OVERFLOW"


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    """How many connections a worker count needs, against what the server allows.

    The server is PostgreSQL (`max_connections`), or PgBouncer (`max_client_conn`) for the
    workers behind it while PgBouncer's own server pool is the "worker" PostgreSQL counts.
    """

    workers: int
    per_worker: int
    max_connections: int
    reserved: int
    # What is counted and its knobs, what limits it, and the fixes when it does not fit.
    clients: str = "workers"
    clients_knob: str = "WEB_CONCURRENCY per host x APP_HOSTS"
    per_worker_knob: str = DECLARED_POOLS
    limit: str = "max_connections"
    fixes: str = (
        "shrink DB_POOL_SIZE/DB_MAX_OVERFLOW, raise the server's max_connections, or put a "
        "pooler such as PgBouncer (transaction mode, `make up POOLER=pgbouncer`) between the "
        "workers and the database"
    )

    @property
    def needed(self) -> int:
        """Connections the workers, a migration and the spare may open together."""
        return self.workers * self.per_worker + MIGRATION_CONNECTIONS + SPARE_CONNECTIONS

    @property
    def available(self) -> int:
        """Connections the server lets ordinary roles open."""
        return self.max_connections - self.reserved

    @property
    def max_workers(self) -> int:
        """The most workers that fit."""
        spare = self.available - MIGRATION_CONNECTIONS - SPARE_CONNECTIONS
        return max(0, spare // self.per_worker)

    def exceeded(self) -> str | None:
        """What does not fit and the fixes, in words; None when it fits."""
        if self.needed <= self.available:
            return None
        return (
            f"connection budget exceeded: {self.describe()}. Fix one of: run at most "
            f"{self.max_workers} {self.clients} in all ({self.clients_knob}), {self.fixes}"
        )

    def describe(self) -> str:
        """The arithmetic, in one line."""
        return (
            f"{self.workers} {self.clients} x {self.per_worker} connections "
            f"({self.per_worker_knob}) + "
            f"{MIGRATION_CONNECTIONS} migration + {SPARE_CONNECTIONS} spare = {self.needed}; "
            f"{self.limit} {self.max_connections} - {self.reserved} reserved = {self.available}"
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """Every connection limit between the workers and PostgreSQL: one part without a pooler;
    with PgBouncer, the workers of every host against its client limit, and its server pool
    against PostgreSQL's."""

    parts: tuple[ConnectionBudget, ...]

    @property
    def pools(self) -> ConnectionBudget:
        """The part the workers' pools count against: PostgreSQL, or PgBouncer's clients."""
        return self.parts[0]

    def exceeded(self) -> str | None:
        """The first limit that does not fit, with its fixes; None when all fit."""
        return next((problem for part in self.parts if (problem := part.exceeded())), None)

    def describe(self) -> str:
        """Each part's arithmetic."""
        return "; ".join(part.describe() for part in self.parts)


async def server_limits(settings: Settings) -> tuple[int, int]:
    """The server's max_connections and the slots reserved for superusers and others.

    Asked without a named prepared statement, so that it also works through PgBouncer.
    """
    connection = await asyncpg.connect(
        asyncpg_dsn(settings.sqlalchemy_url),
        timeout=settings.db_connect_timeout,
        statement_cache_size=0,
    )
    try:
        max_connections = int(await connection.fetchval("SHOW max_connections"))
        reserved = int(await connection.fetchval("SHOW superuser_reserved_connections"))
        # PostgreSQL 16 added reserved_connections for pg_use_reserved_connections roles.
        extra = await connection.fetchval(
            "SELECT setting FROM pg_settings WHERE name = 'reserved_connections'"
        )
        return max_connections, reserved + int(extra or 0)
    finally:
        await connection.close()


@dataclass(frozen=True, slots=True)
class MeasuredPools:
    """What one worker's app opens at most, measured from its engines once its lifespan had
    started (`service.stack`): the sum of each engine's pool size and overflow."""

    per_worker: int
    engines: int

    @property
    def knob(self) -> str:
        """How the budget names the figure."""
        return f"measured from the app's {self.engines} engine{'s' if self.engines > 1 else ''}"


def budget_for(
    settings: BudgetSettings,
    workers: int,
    max_connections: int,
    reserved: int,
    measured: MeasuredPools | None = None,
) -> Budget:
    """The budget of `workers` per host on `settings.app_hosts` hosts, given PostgreSQL's
    limits: each worker's connections as `measured` from the app's engines, else as declared
    (DB_POOL_SIZE + DB_MAX_OVERFLOW)."""
    per_worker = settings.db_pool_size + settings.db_max_overflow
    knob = DECLARED_POOLS
    if measured is not None:
        per_worker, knob = measured.per_worker, measured.knob
    hosts = settings.app_hosts
    if settings.db_pooler == "none":
        pools = ConnectionBudget(
            hosts * workers, per_worker, max_connections, reserved, per_worker_knob=knob
        )
        return Budget((pools,))
    clients = ConnectionBudget(
        workers=hosts * workers,
        per_worker=per_worker,
        per_worker_knob=knob,
        max_connections=settings.pgbouncer_max_client_conn,
        reserved=0,
        limit="PgBouncer's max_client_conn",
        fixes="shrink DB_POOL_SIZE/DB_MAX_OVERFLOW or raise PGBOUNCER_MAX_CLIENT_CONN",
    )
    servers = ConnectionBudget(
        workers=1,
        per_worker=settings.pgbouncer_pool_size,
        max_connections=max_connections,
        reserved=reserved,
        clients="PgBouncer server pools",
        clients_knob="one PgBouncer",
        per_worker_knob="PGBOUNCER_POOL_SIZE",
        fixes="shrink PGBOUNCER_POOL_SIZE or raise the server's max_connections",
    )
    return Budget((clients, servers))


def connection_budget(
    settings: BudgetSettings, workers: int, measured: MeasuredPools | None = None
) -> Budget:
    """The connections `workers` (per host) need, against what the database server allows
    (asked, through the pooler if there is one) and what the pooler accepts."""
    max_connections, reserved = asyncio.run(server_limits(settings))
    return budget_for(settings, workers, max_connections, reserved, measured)


def check_budget(
    settings: BudgetSettings, workers: int, measured: MeasuredPools | None = None
) -> Budget:
    """Raise BudgetExceededError, with the numbers and the fixes, if `workers` do not fit."""
    budget = connection_budget(settings, workers, measured)
    problem = budget.exceeded()
    if problem:
        raise BudgetExceededError(problem)
    return budget


def main() -> None:
    """Command line: `check --workers N` or `cpus`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check that N workers fit the connection budget")
    check.add_argument("--workers", type=int, required=True)
    commands.add_parser("cpus", help="print the CPUs this process may use")
    args = parser.parse_args()
    if args.command == "cpus":
        print(usable_cpus())
        return
    try:
        budget = check_budget(load(BudgetSettings), args.workers)
    except BudgetExceededError as exc:
        sys.exit(str(exc))
    print(f"connection budget ok: {budget.describe()}")


if __name__ == "__main__":
    main()
