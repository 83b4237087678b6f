"""`make lint-migrations`: squawk, the PostgreSQL migration linter, on the upgrade SQL of every
Alembic revision, each revision on its own.

    python -m deploy.lint_migrations [path/alembic.ini ...]      (default: alembic.ini)

Alembic's offline mode renders each revision's upgrade as `alembic upgrade <down>:<revision>
--sql` does, with no database (env.py gets a placeholder DATABASE_URL it never connects to), and
squawk reads each revision's SQL with the rules of `.squawk.toml`: plain index builds, table
rewrites, constraints not added NOT VALID, dropped or renamed columns and tables, and the rest
docs/operations.md lists ("Migration lint"). A finding names the revision file, the rule, the
statement and the fix.

The revisions already applied in production cannot change: ALLOWED lists the findings each of
them keeps, with the reason. Any other finding fails, and so does an allowance that no longer
matches one. Exits 0 when every revision passes, 1 on a finding, 2 when it could not lint.
"""

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SQUAWK_CONFIG = ROOT / ".squawk.toml"
DEFAULT_CONFIGS = ("alembic.ini",)
# Offline mode never connects; env.py only needs a PostgreSQL URL to pick the dialect.
PLACEHOLDER_DATABASE_URL = "postgresql+asyncpg://migration-lint@127.0.0.1:9/migration_lint"
DOCS = "docs/operations.md#migration-lint"
RULE_DOCS = "https://squawkhq.com/docs/"


@dataclass(frozen=True)
class Allowed:
    """A finding a revision keeps: `file` is relative to its alembic.ini's directory."""

    file: str
    revision: str
    rule: str
    reason: str


# Findings of revisions applied before the lint existed. A new revision is held to every rule:
# allow one here only with its reason, in the change that adds it (docs/operations.md).
_INVENTORY = "examples/inventory is served unchanged, as any app's applied history would be"
ALLOWED = (
    Allowed(
        "migrations/versions/2026-12-01_create_idempotency_keys.py",
        "0002_create_idempotency_keys",
        "prefer-bigint-over-smallint",
        "applied in production; `status` holds an HTTP status code (100..599), which a smallint "
        "always fits, in a table created by this revision (no rewrite)",
    ),
    Allowed(
        "migrations/versions/0001_items.py", "0001_items", "prefer-bigint-over-int", _INVENTORY
    ),
    Allowed("migrations/versions/0001_items.py", "0001_items", "prefer-identity", _INVENTORY),
    Allowed("migrations/versions/0001_items.py", "0001_items", "prefer-text-field", _INVENTORY),
)

# How to do what a rule asks in an Alembic revision (squawk's own help says it in SQL).
ALEMBIC_FIXES = {
    "require-concurrent-index-creation": (
        "in `with op.get_context().autocommit_block():`, "
        "`op.drop_index(name, table, postgresql_concurrently=True, if_exists=True)` (a build "
        "that failed leaves an INVALID index behind) then `op.create_index(name, table, "
        "columns, postgresql_concurrently=True, if_not_exists=True)`"
    ),
    "ban-concurrent-index-creation-in-transaction": (
        "move the concurrent build into `with op.get_context().autocommit_block():`"
    ),
    "require-concurrent-index-deletion": (
        "`op.drop_index(name, table, postgresql_concurrently=True, if_exists=True)` "
        "in `with op.get_context().autocommit_block():`"
    ),
    "constraint-missing-not-valid": (
        "add it with `postgresql_not_valid=True` (`op.create_foreign_key`, "
        "`op.create_check_constraint`), then `op.execute('ALTER TABLE ... VALIDATE "
        "CONSTRAINT ...')` in a later transaction: a later revision, or after an autocommit block"
    ),
    "adding-foreign-key-constraint": (
        "`op.create_foreign_key(..., postgresql_not_valid=True)`, then VALIDATE CONSTRAINT "
        "in a later transaction"
    ),
    "adding-field-with-default": (
        "add the column with no default, then `op.alter_column(table, column, "
        "server_default=...)` (new rows only: no rewrite), then backfill the rows in batches"
    ),
    "adding-required-field": "add the column nullable, or NOT NULL with a constant default",
    "adding-not-nullable-field": (
        "add `CHECK (column IS NOT NULL)` with `postgresql_not_valid=True`, VALIDATE it in a "
        "later transaction, then SET NOT NULL: PostgreSQL uses the validated check, no scan"
    ),
    "changing-column-type": (
        "expand/contract: a new column written beside the old, a batched backfill, reads "
        "switched, the old column dropped a release later"
    ),
    "ban-drop-column": (
        "drop it only in a release after the last one that reads it (expand/contract), "
        "and then allow the finding on purpose"
    ),
    "ban-drop-table": (
        "drop it only in a release after the last one that reads it, "
        "and then allow the finding on purpose"
    ),
    "renaming-column": (
        "add the new column, write both, backfill, switch reads, drop the old one later"
    ),
    "renaming-table": "create the new table (or a view) beside the old; switch, then drop",
    "disallowed-unique-constraint": (
        "build a unique index concurrently, then `ALTER TABLE ... ADD CONSTRAINT ... "
        "UNIQUE USING INDEX ...`"
    ),
    "prefer-robust-stmts": (
        "this revision commits part of its work on its own (an autocommit block), and a retried "
        "release runs it again: `if_not_exists=True` / `if_exists=True`, or put those "
        "statements after the autocommit block"
    ),
}


@dataclass(frozen=True)
class Rendered:
    """One revision and the file holding its upgrade SQL."""

    revision: str
    path: Path
    sql: Path


@dataclass(frozen=True)
class Finding:
    """A squawk finding in one revision's upgrade SQL."""

    rendered: Rendered
    rule: str
    message: str
    help: str
    statement: str


class LintError(Exception):
    """The lint could not run: the revisions would not render, or squawk failed."""


# The version table Alembic creates at the top of a render from base: its bookkeeping, not
# the revision's schema (squawk would flag its VARCHAR(32)).
_VERSION_TABLE = re.compile(
    r"CREATE TABLE [^(;]+\((?:(?!\);).)*PRIMARY KEY \(version_num\)\s*\);\s*", re.DOTALL
)


def render_revisions(config_path: Path, into: Path) -> list[dict[str, str]]:
    """Write each revision's upgrade SQL under `into`, base first (run in a child process)."""
    # Here only: Alembic and SQLAlchemy take most of a second to import, which the parent
    # process, rendering nothing, need not pay.
    from alembic.config import Config  # noqa: PLC0415
    from alembic.runtime.environment import EnvironmentContext  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    script = ScriptDirectory.from_config(Config(str(config_path)))
    revisions = list(reversed(list(script.walk_revisions())))
    rendered = []
    for number, revision in enumerate(revisions, start=1):
        buffer = io.StringIO()
        config = Config(str(config_path), output_buffer=buffer)
        config.attributes["configure_logger"] = False  # the notes' env.py honours it
        destination = revision.revision

        def upgrade(heads: Any, context: Any, destination: str = destination) -> Any:
            # What `alembic upgrade A:B --sql` runs, with a tuple start for a merge revision,
            # which the command line's range cannot name.
            return script._upgrade_revs(destination, heads)

        start = revision.down_revision if revision.down_revision is not None else "base"
        with EnvironmentContext(
            config,
            script,
            fn=upgrade,
            as_sql=True,
            starting_rev=start,
            destination_rev=destination,
        ):
            script.run_env()
        sql = buffer.getvalue()
        if start == "base":
            head, marker, rest = sql.partition("-- Running upgrade")
            sql = _VERSION_TABLE.sub("", head, count=1) + marker + rest
        sql_path = into / f"{number:04d}_{destination}.sql"
        sql_path.write_text(sql)
        rendered.append({"revision": destination, "path": revision.path, "sql": str(sql_path)})
    return rendered


def render_in_child(config_path: Path, into: Path) -> list[Rendered]:
    """Render in a fresh interpreter run from the alembic.ini's directory, as Alembic's command
    line would be: each app's env.py, sys.path and logging stay out of this process."""
    config_path = config_path.resolve()
    result = subprocess.run(
        [sys.executable, "-m", "deploy.lint_migrations", "--render-into", str(into),
         str(config_path)],
        cwd=config_path.parent,
        env={**os.environ, "DATABASE_URL": PLACEHOLDER_DATABASE_URL},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise LintError(
            f"{config_path}: the revisions did not render (alembic upgrade --sql):\n"
            + (result.stderr or result.stdout).strip()
        )
    manifest = json.loads((into / "revisions.json").read_text())
    return [Rendered(item["revision"], Path(item["path"]), Path(item["sql"])) for item in manifest]


def squawk_binary() -> str:
    """The squawk the dev group installs beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    found = str(beside) if beside.exists() else shutil.which("squawk")
    if found is None:
        raise LintError("squawk not found: `uv sync` installs it (squawk-cli, the dev group)")
    return found


def squawk_version() -> str:
    """`squawk --version`, without its name."""
    result = subprocess.run(
        [squawk_binary(), "--version"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip().removeprefix("squawk ")


def run_squawk(revisions: Sequence[Rendered]) -> list[Finding]:
    """squawk on every revision's SQL, with the checked-in config; its findings."""
    by_file = {str(rendered.sql): rendered for rendered in revisions}
    result = subprocess.run(
        [squawk_binary(), "--config", str(SQUAWK_CONFIG), "--reporter", "json", *by_file],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        reported = json.loads(result.stdout) if result.returncode in (0, 1) else None
    except json.JSONDecodeError:
        reported = None
    if not isinstance(reported, list):
        raise LintError(
            f"squawk exited {result.returncode}:\n{(result.stderr or result.stdout).strip()}"
        )
    findings = []
    for item in reported:
        rendered = by_file[item["file"]]
        lines = rendered.sql.read_text().splitlines()[item["line"] : item["line_end"] + 1]
        if len(lines) > 6:
            lines = [*lines[:5], "..."]
        findings.append(
            Finding(
                rendered=rendered,
                rule=item["rule_name"],
                message=item["message"],
                help=item.get("help") or "",
                statement="\n".join(lines),
            )
        )
    return findings


def relative_file(rendered: Rendered, config_path: Path) -> str:
    """The revision file as ALLOWED names it: relative to the alembic.ini's directory."""
    try:
        return rendered.path.resolve().relative_to(config_path.resolve().parent).as_posix()
    except ValueError:
        return rendered.path.as_posix()


def judge(
    findings: Sequence[Finding],
    revisions: Sequence[Rendered],
    config_path: Path,
    allowed: Sequence[Allowed] = ALLOWED,
) -> tuple[list[Finding], list[Finding], list[Allowed]]:
    """Split the findings into refused and allowed, and name the allowances of this history
    that matched nothing (stale: a kept revision's finding went away, or the entry is wrong)."""
    present = {(relative_file(r, config_path), r.revision) for r in revisions}
    mine = [entry for entry in allowed if (entry.file, entry.revision) in present]
    keys = {(entry.file, entry.revision, entry.rule) for entry in mine}
    refused, kept, used = [], [], set()
    for finding in findings:
        rendered = finding.rendered
        key = (relative_file(rendered, config_path), rendered.revision, finding.rule)
        if key in keys:
            kept.append(finding)
            used.add(key)
        else:
            refused.append(finding)
    stale = [entry for entry in mine if (entry.file, entry.revision, entry.rule) not in used]
    return refused, kept, stale


def display(path: Path) -> str:
    """A path relative to the working directory when it is under it."""
    try:
        return path.resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def report(finding: Finding) -> str:
    """One refused finding: the revision file, the rule, the statement, why and the fix."""
    rendered = finding.rendered
    indented = "\n".join(f"      {line}" for line in finding.statement.splitlines())
    lines = [
        f"{display(rendered.path)} (revision {rendered.revision}): {finding.rule}",
        indented,
        f"  why: {finding.message}",
    ]
    if finding.help:
        lines.append(f"  fix: {finding.help}")
    if finding.rule in ALEMBIC_FIXES:
        lines.append(f"  in Alembic: {ALEMBIC_FIXES[finding.rule]}")
    lines.append(f"  rule: {RULE_DOCS}{finding.rule}")
    return "\n".join(lines)


def lint(config_path: Path) -> int:
    """Lint every revision of one alembic.ini; 0 clean, 1 refused."""
    with tempfile.TemporaryDirectory(prefix="lint-migrations-") as directory:
        revisions = render_in_child(config_path, Path(directory))
        findings = run_squawk(revisions) if revisions else []
    refused, kept, stale = judge(findings, revisions, config_path)
    name = display(config_path)
    for finding in refused:
        print(report(finding), file=sys.stderr)
    for entry in stale:
        print(
            f"{name}: ALLOWED in deploy/lint_migrations.py lets {entry.file} "
            f"(revision {entry.revision}) keep {entry.rule}, but squawk no longer finds it "
            "there: remove the entry",
            file=sys.stderr,
        )
    if refused or stale:
        print(
            f"lint-migrations: {name}: {len(refused)} finding(s) in "
            f"{len({f.rendered.revision for f in refused})} revision(s) of {len(revisions)}"
            + (f", {len(stale)} stale allowance(s)" if stale else "")
            + f". To allow a finding on purpose, see {DOCS}",
            file=sys.stderr,
        )
        return 1
    allowed_note = f", {len(kept)} finding(s) of applied revisions allowed" if kept else ""
    print(f"lint-migrations: {name}: {len(revisions)} revision(s) pass{allowed_note}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.lint_migrations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("configs", nargs="*", type=Path, metavar="alembic.ini")
    # Internal: the child process that renders the SQL (render_in_child).
    parser.add_argument("--render-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs = args.configs or [Path(name) for name in DEFAULT_CONFIGS]
    if args.render_into is not None:
        (config_path,) = configs
        manifest = render_revisions(config_path.resolve(), args.render_into)
        (args.render_into / "revisions.json").write_text(json.dumps(manifest))
        return 0
    missing = [str(path) for path in configs if not path.is_file()]
    if missing:
        print(f"lint-migrations: no such alembic.ini: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        print(f"lint-migrations: squawk {squawk_version()}, rules of {display(SQUAWK_CONFIG)}")
        statuses = [lint(path) for path in configs]
    except LintError as error:
        print(f"lint-migrations: {error}", file=sys.stderr)
        return 2
    return max(statuses)


if __name__ == "__main__":
    sys.exit(main())
