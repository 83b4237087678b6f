"""Alembic: models and migrations agree, runs are serialised, and the schema round-trips."""

import asyncio
import os
import re
import subprocess
import sys
import time

import asyncpg
from sqlalchemy.engine import URL

from service.database.urls import asyncpg_dsn
from service.stack.heads import alembic_heads
from tests.postgres import ROOT, fresh_database, migrate

MIGRATION_LOCK_ID = 0x6E6F7465736D6967


def test_models_and_migrations_never_drift(database_url: URL) -> None:
    result = migrate(database_url, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_revision_files_are_named_by_date_and_slug() -> None:
    names = [path.name for path in (ROOT / "migrations" / "versions").glob("*.py")]
    assert names
    for name in names:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_[a-z0-9_]+\.py", name), name


def test_downgrade_and_upgrade_round_trip(pg_server: URL) -> None:
    # Alembic's command line three times in one process: one interpreter start, not three.
    script = (
        "from alembic.config import main\n"
        "for argv in (['upgrade', 'head'], ['downgrade', 'base'], ['upgrade', 'head']):\n"
        "    main(argv=argv)\n"
    )
    revisions = len(list((ROOT / "migrations" / "versions").glob("*.py")))
    with fresh_database(pg_server) as url:
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url.render_as_string(hide_password=False)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert len(re.findall(r"Running upgrade ", result.stderr)) == 2 * revisions, result.stderr
        assert len(re.findall(r"Running downgrade ", result.stderr)) == revisions, result.stderr
        assert _versions(url) == sorted(alembic_heads())


def _versions(url: URL) -> list[str]:
    async def read() -> list[str]:
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            rows = await connection.fetch("SELECT version_num FROM alembic_version")
            return [row["version_num"] for row in rows]
        finally:
            await connection.close()

    return asyncio.run(read())


def test_concurrent_upgrades_apply_the_schema_once(pg_server: URL) -> None:
    with fresh_database(pg_server) as url:
        env_url = url.render_as_string(hide_password=False)
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "alembic", "upgrade", "head"],
                cwd=ROOT,
                env={**os.environ, "DATABASE_URL": env_url},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(3)
        ]
        outputs = [run.communicate(timeout=120)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0, 0], outputs
        applied = re.findall(r"Running upgrade .*-> (\w+)", "".join(outputs))
        revisions = list((ROOT / "migrations" / "versions").glob("*.py"))
        assert len(applied) == len(set(applied)) == len(revisions), outputs
        assert _versions(url) == sorted(alembic_heads())


async def test_upgrade_waits_for_the_migration_lock(pg_server: URL) -> None:
    """While another deploy step holds the lock, an upgrade must not touch the schema."""
    with fresh_database(pg_server) as url:
        holder = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
            run = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "alembic",
                "upgrade",
                "head",
                cwd=ROOT,
                env={**os.environ, "DATABASE_URL": url.render_as_string(hide_password=False)},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            # Until the upgrade waits on the lock: it has then read nothing and changed nothing.
            deadline = time.monotonic() + 60
            while not await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ):
                assert run.returncode is None, "upgrade finished while the lock was held"
                assert time.monotonic() < deadline, "the upgrade never waited for the lock"
                await asyncio.sleep(0.1)
            assert run.returncode is None, "upgrade finished while the lock was held"
            tables = await holder.fetchval(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'notes'"
            )
            assert tables == 0
            started = time.monotonic()
            await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
            output, _ = await asyncio.wait_for(run.communicate(), timeout=60)
            assert run.returncode == 0, output
            assert time.monotonic() - started < 30
            tables = await holder.fetchval(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'notes'"
            )
            assert tables == 1
        finally:
            await holder.close()


def test_readiness_knows_alembics_heads() -> None:
    """/readyz reads the heads from the revision files itself; they must equal Alembic's."""
    from alembic.config import Config  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    assert alembic_heads() == frozenset(script.get_heads())
    assert alembic_heads()
