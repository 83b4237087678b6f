"""`python -m service.stack.alembic_run <alembic arguments>`: Alembic's command line, with
every statement it runs under PostgreSQL's `lock_timeout` (`MIGRATION_LOCK_TIMEOUT`).

An `ALTER TABLE` waiting for its lock holds every request that needs the table behind it, for
as long as it waits. With a short `lock_timeout` the migration gives up instead, and traffic
never waits longer than that: the migration waits for traffic, never traffic for a migration.
Any app's `env.py` is run unchanged: every engine it makes (through SQLAlchemy's dialect
hook, as the workers' engines are found) opens its connections with the setting. A
statement that gave up exits `LOCK_NOT_AVAILABLE` (75), for `service.stack.migrate` to try
again; the revision it was in rolled back with its transaction.
"""

import os
import sys
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError

from service.stack.every_engine import on_every_engine

# sysexits.h's EX_TEMPFAIL: try again later.
LOCK_NOT_AVAILABLE = 75
_LOCK_NOT_AVAILABLE_SQLSTATE = "55P03"


def bound_lock_waits(milliseconds: int) -> None:
    """From now on, every PostgreSQL connection an engine of this process opens waits at most
    `milliseconds` for any lock (set at the connection's start, outside any transaction)."""

    def bound(engine: Engine) -> None:
        @event.listens_for(engine, "do_connect")
        def bounded(dialect: Any, record: Any, args: Any, params: dict[str, Any]) -> None:
            if dialect.driver == "asyncpg":
                params.setdefault("server_settings", {})["lock_timeout"] = str(milliseconds)
            elif dialect.name == "postgresql":  # libpq's drivers
                options = params.get("options", "")
                params["options"] = f"{options} -c lock_timeout={milliseconds}".strip()

    on_every_engine(bound)


def gave_up_waiting(exc: BaseException) -> str | None:
    """The statement in `exc`'s chain that ended on `lock_timeout` ("" when the chain does not
    say which), or None when no statement gave up waiting for a lock."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    statement = None
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DBAPIError) and statement is None:
            statement = str(current.statement or "")
        if getattr(current, "sqlstate", None) == _LOCK_NOT_AVAILABLE_SQLSTATE:
            return statement or ""
        pending += [current.__cause__, current.__context__, getattr(current, "orig", None)]
    return None


def main(argv: list[str]) -> int:
    """Run Alembic with `argv`; 75 when a statement gave up waiting for its lock."""
    from alembic.config import CommandLine  # noqa: PLC0415 (a second's import, only here)

    seconds = float(os.environ.get("MIGRATION_LOCK_TIMEOUT", "0"))
    if seconds > 0:
        bound_lock_waits(max(1, round(seconds * 1000)))
    try:
        CommandLine(prog="alembic").main(argv)
    except Exception as exc:
        waited = gave_up_waiting(exc)
        if waited is None:
            raise
        statement = " ".join(waited.split())[:200]
        print(
            f"migrations: gave up waiting {seconds:g}s for a lock (MIGRATION_LOCK_TIMEOUT), "
            f"in: {statement or '?'}",
            file=sys.stderr,
            flush=True,
        )
        return LOCK_NOT_AVAILABLE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
