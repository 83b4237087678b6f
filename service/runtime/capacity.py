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

from service.config import Settings, load_settings
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


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    """How many connections a worker count needs, against what the server allows."""

    workers: int
    per_worker: int
    max_connections: int
    reserved: int

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
            f"{self.max_workers} workers (WEB_CONCURRENCY), shrink DB_POOL_SIZE/"
            "DB_MAX_OVERFLOW, raise the server's max_connections, or put a pooler such as "
            "PgBouncer (transaction mode) between the workers and the database"
        )

    def describe(self) -> str:
        """The arithmetic, in one line."""
        return (
            f"{self.workers} workers x {self.per_worker} connections (DB_POOL_SIZE + "
            f"DB_MAX_OVERFLOW) + {MIGRATION_CONNECTIONS} migration + {SPARE_CONNECTIONS} spare "
            f"= {self.needed}; the server allows {self.max_connections} max_connections - "
            f"{self.reserved} reserved = {self.available}"
        )


async def server_limits(settings: Settings) -> tuple[int, int]:
    """The server's max_connections and the slots reserved for superusers and others."""
    dsn = settings.sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn, timeout=settings.db_connect_timeout)
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


def connection_budget(settings: Settings, workers: int) -> ConnectionBudget:
    """The connections `workers` need, against what the database server allows (asked)."""
    max_connections, reserved = asyncio.run(server_limits(settings))
    return ConnectionBudget(
        workers=workers,
        per_worker=settings.db_pool_size + settings.db_max_overflow,
        max_connections=max_connections,
        reserved=reserved,
    )


def check_budget(settings: Settings, workers: int) -> ConnectionBudget:
    """Raise BudgetExceededError, with the numbers and the fixes, if `workers` do not fit."""
    budget = connection_budget(settings, workers)
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
        budget = check_budget(load_settings(), args.workers)
    except BudgetExceededError as exc:
        sys.exit(str(exc))
    print(f"connection budget ok: {budget.describe()}")


if __name__ == "__main__":
    main()
