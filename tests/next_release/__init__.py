"""The notes service's next release, for the release tests: a revision that expands the
schema (a column with a default, an index built concurrently), and code that uses it.

`Checkout` lays out an app directory as a deploy does: first the current code and
migrations, then, for the release, this revision and the new code over them.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL

from service.config import ROOT
from service.database.urls import asyncpg_dsn

HERE = Path(__file__).resolve().parent
REVISION = "0004_note_priority"
CURRENT_APP = "from service.main import create_app  # the notes service as it is\n"
APP_ENV_NAME = "release_app:create_app()"


@dataclass(frozen=True)
class Checkout:
    """An app directory served with APP=release_app:create_app(), APP_PATH and MIGRATIONS."""

    root: Path

    @classmethod
    def current(cls, root: Path) -> "Checkout":
        """The notes service and its migrations as they are today."""
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "alembic.ini", root / "alembic.ini")
        shutil.copytree(
            ROOT / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__")
        )
        (root / "release_app.py").write_text(CURRENT_APP)
        # Readable by the stack's unprivileged service account, like a checkout.
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        return cls(root)

    @property
    def alembic_ini(self) -> Path:
        return self.root / "alembic.ini"

    def env(self) -> dict[str, str]:
        """What serves this checkout."""
        return {
            "APP": APP_ENV_NAME,
            "APP_PATH": str(self.root),
            "MIGRATIONS": str(self.alembic_ini),
        }

    def add_revision(self, source: Path) -> None:
        """A revision file copied into the migrations."""
        target = self.root / "migrations" / "versions" / source.name
        shutil.copy(source, target)
        target.chmod(0o644)

    def next_release(self) -> None:
        """Check out the next release over this one: its revision and its code."""
        self.add_revision(HERE / "2026-12-08_add_note_priority.py")
        app = self.root / "release_app.py"
        shutil.copy(HERE / "release_app.py", app)
        app.chmod(0o644)


async def schema(database: URL) -> tuple[str, bool, bool | None]:
    """Where the release has got to: the revision, whether notes.priority exists, and whether
    its index is valid (None: no index)."""
    connection = await asyncpg.connect(asyncpg_dsn(database))
    try:
        revision = await connection.fetchval("SELECT version_num FROM alembic_version")
        column = await connection.fetchval(
            "SELECT count(*) = 1 FROM information_schema.columns "
            "WHERE table_name = 'notes' AND column_name = 'priority'"
        )
        valid = await connection.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('ix_notes_priority')"
        )
        return revision, column, valid
    finally:
        await connection.close()
