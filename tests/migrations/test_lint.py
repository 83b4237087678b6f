"""The migration lint (`python -m deploy.lint_migrations`, squawk on each revision's upgrade SQL),
run for real on revisions written into a copy of the migrations, beside the real tree."""

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploy.lint_migrations import Allowed, Finding, Rendered, judge
from tests.postgres import ROOT

HEAD = "0003_count_notes_as_written"

REVISION = '''"""{slug}

Revision ID: {revision}
Revises: {down_revision}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
'''


def lint(*configs: Path) -> subprocess.CompletedProcess[str]:
    """The linter's command line on `configs`."""
    return subprocess.run(
        [sys.executable, "-m", "deploy.lint_migrations", *map(str, configs)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A copy of the notes' migrations and alembic.ini; the copy's alembic.ini."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations", ignore=ignore)
    shutil.copy(ROOT / "alembic.ini", tmp_path / "alembic.ini")
    return tmp_path / "alembic.ini"


def add_revision(config: Path, name: str, down_revision: str, upgrade: str) -> str:
    """Write `YYYY-MM-DD_slug.py` with `upgrade` as its body; its revision id (`00NN_slug`)."""
    number = len(list((config.parent / "migrations" / "versions").glob("*.py"))) + 1
    slug = name.split("_", 1)[1]
    revision = f"{number:04d}_{slug}"
    body = textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")
    source = REVISION.format(slug=slug, revision=revision, down_revision=down_revision, body=body)
    (config.parent / "migrations" / "versions" / f"{name}.py").write_text(source)
    return revision


def refusals(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The linter's `file (revision id): rule` lines, each file by its name."""
    found = (REFUSAL.fullmatch(line) for line in result.stderr.splitlines())
    return {f"{Path(m[1]).name} (revision {m[2]}): {m[3]}" for m in found if m}


REFUSAL = re.compile(r"(\S+\.py) \(revision (\S+)\): ([a-z-]+)")


def test_the_projects_migrations_pass() -> None:
    result = lint(ROOT / "alembic.ini", ROOT / "examples" / "inventory" / "alembic.ini")
    assert result.returncode == 0, result.stdout + result.stderr
    for config in ("alembic.ini", "examples/inventory/alembic.ini"):
        revisions = len(list((ROOT / config).parent.glob("migrations/versions/*.py")))
        assert f"lint-migrations: {config}: {revisions} revision(s) pass" in result.stdout, (
            result.stdout
        )


def test_a_plain_index_build_is_refused(migrations: Path) -> None:
    revision = add_revision(
        migrations,
        "2027-01-10_index_created_at",
        HEAD,
        'op.create_index("ix_notes_created_at", "notes", ["created_at"])',
    )
    result = lint(migrations)
    assert result.returncode == 1, result.stdout + result.stderr
    name = f"2027-01-10_index_created_at.py (revision {revision})"
    assert refusals(result) == {f"{name}: require-concurrent-index-creation"}, result.stderr
    assert "autocommit_block" in result.stderr, result.stderr


def test_a_foreign_key_without_not_valid_is_refused(migrations: Path) -> None:
    revision = add_revision(
        migrations,
        "2027-01-10_note_parents",
        HEAD,
        """
        op.add_column("notes", sa.Column("parent_id", sa.BigInteger(), nullable=True))
        op.create_foreign_key(
            "fk_notes_parent_id_notes", "notes", "notes", ["parent_id"], ["id"]
        )
        """,
    )
    result = lint(migrations)
    assert result.returncode == 1, result.stdout + result.stderr
    name = f"2027-01-10_note_parents.py (revision {revision})"
    assert refusals(result) == {
        f"{name}: adding-foreign-key-constraint",
        f"{name}: constraint-missing-not-valid",
    }, result.stderr


def test_rewrites_and_drops_are_refused_each_naming_its_revision(migrations: Path) -> None:
    token = add_revision(
        migrations,
        "2027-01-10_note_tokens",
        HEAD,
        """
        op.add_column(
            "notes",
            sa.Column("token", sa.Uuid(), server_default=sa.text("gen_random_uuid()")),
        )
        """,
    )
    numeric = add_revision(
        migrations,
        "2027-01-11_numeric_totals",
        token,
        """
        op.alter_column(
            "note_count_deltas", "total", type_=sa.Numeric(), existing_type=sa.BigInteger()
        )
        """,
    )
    dropped = add_revision(
        migrations,
        "2027-01-12_drop_completed",
        numeric,
        'op.drop_column("notes", "completed")',
    )
    result = lint(migrations)
    assert result.returncode == 1, result.stdout + result.stderr
    assert refusals(result) == {
        f"2027-01-10_note_tokens.py (revision {token}): adding-field-with-default",
        f"2027-01-11_numeric_totals.py (revision {numeric}): changing-column-type",
        f"2027-01-12_drop_completed.py (revision {dropped}): ban-drop-column",
    }, result.stderr


def test_an_applied_revisions_allowance_does_not_cover_a_new_one(migrations: Path) -> None:
    """0002 keeps its smallint (ALLOWED); a new revision adding one is refused."""
    revision = add_revision(
        migrations,
        "2027-01-10_note_ranks",
        HEAD,
        'op.add_column("notes", sa.Column("rank", sa.SmallInteger(), nullable=True))',
    )
    result = lint(migrations)
    assert result.returncode == 1, result.stdout + result.stderr
    assert refusals(result) == {
        f"2027-01-10_note_ranks.py (revision {revision}): prefer-bigint-over-smallint"
    }, result.stderr


def test_a_well_written_expand_and_a_deliberate_contract_pass(migrations: Path) -> None:
    expand = add_revision(
        migrations,
        "2027-01-10_expand_notes",
        HEAD,
        """
        op.add_column("notes", sa.Column("archived_at", sa.DateTime(timezone=True)))
        op.add_column(
            "notes", sa.Column("priority", sa.BigInteger(), server_default="0", nullable=False)
        )
        op.add_column("notes", sa.Column("parent_id", sa.BigInteger(), nullable=True))
        op.create_foreign_key(
            "fk_notes_parent_id_notes", "notes", "notes", ["parent_id"], ["id"],
            postgresql_not_valid=True,
        )
        op.create_check_constraint(
            op.f("ck_notes_priority_range"), "notes", "priority BETWEEN 0 AND 9",
            postgresql_not_valid=True,
        )
        """,
    )
    index = add_revision(
        migrations,
        "2027-01-11_index_and_validate",
        expand,
        """
        with op.get_context().autocommit_block():
            op.drop_index(
                "ix_notes_priority", table_name="notes", postgresql_concurrently=True,
                if_exists=True,
            )
            op.create_index(
                "ix_notes_priority", "notes", ["priority"], postgresql_concurrently=True,
                if_not_exists=True,
            )
        op.execute("ALTER TABLE notes VALIDATE CONSTRAINT fk_notes_parent_id_notes")
        op.execute("ALTER TABLE notes VALIDATE CONSTRAINT ck_notes_priority_range")
        """,
    )
    add_revision(
        migrations,
        "2027-01-12_contract_notes",
        index,
        """
        # A release after the last one that read it: dropped on purpose.
        op.execute("-- squawk-ignore ban-drop-column\\nALTER TABLE notes DROP COLUMN archived_at")
        """,
    )
    result = lint(migrations)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alembic.ini: 6 revision(s) pass" in result.stdout, result.stdout


def test_allowances_match_their_revision_and_go_stale(tmp_path: Path) -> None:
    """An allowance covers its own revision's rule only; one that matches nothing is named."""
    versions = tmp_path / "migrations" / "versions"
    applied = Rendered("0002_applied", versions / "applied.py", tmp_path / "1.sql")
    new = Rendered("0003_new", versions / "new.py", tmp_path / "2.sql")
    entry = Allowed("migrations/versions/applied.py", "0002_applied", "prefer-text-field", "why")
    other = Allowed("migrations/versions/gone.py", "0001_gone", "prefer-text-field", "why")
    finding = Finding(new, "prefer-text-field", "message", "help", "statement")
    config = tmp_path / "alembic.ini"

    assert judge([finding], [applied, new], config, [entry, other]) == ([finding], [], [entry])
    kept = Finding(applied, "prefer-text-field", "message", "help", "statement")
    assert judge([kept], [applied, new], config, [entry, other]) == ([], [kept], [])


def test_the_next_release_of_the_release_tests_passes(migrations: Path) -> None:
    """tests/next_release's revision is what the docs hold up as an expand step."""
    shutil.copy(
        ROOT / "tests" / "next_release" / "2026-12-08_add_note_priority.py",
        migrations.parent / "migrations" / "versions",
    )
    result = lint(migrations)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 revision(s) pass" in result.stdout
