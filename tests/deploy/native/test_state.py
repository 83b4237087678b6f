"""What `up` saves for the commands after it: one typed StackState, written as JSON in the run
directory, read back the same; an older runner's file (string booleans) still read; anything
else refused, naming the file."""

import json
import stat
from pathlib import Path

import pytest

from deploy.native.layout import RunLayout
from deploy.native.settings import StackSettings
from deploy.native.state import Stack, StackState, StateFileError

URL = "postgresql+asyncpg://notes:secret@127.0.0.1:55432/notes"
POOLED = "postgresql+asyncpg://notes:secret@127.0.0.1:56432/notes"


def stack_in(run_dir: Path) -> Stack:
    return Stack(RunLayout(run_dir), StackSettings(run_dir=run_dir))


@pytest.mark.parametrize(
    "state",
    [
        StackState(database_url=URL, private_postgres=True),
        StackState(database_url=URL).through("pgbouncer", POOLED),
    ],
    ids=["private-cluster", "through-pgbouncer"],
)
def test_a_saved_state_reads_back_the_same(tmp_path: Path, state: StackState) -> None:
    stack = stack_in(tmp_path)
    assert stack.saved() is None
    stack.save(state)
    assert stack.saved() == state
    written = json.loads(stack.layout.state_file.read_text())
    assert written["private_postgres"] is state.private_postgres  # a JSON boolean, not "1"
    # The URLs may hold a password: the file is its owner's only, and no temporary is left.
    assert stat.S_IMODE(stack.layout.state_file.stat().st_mode) == 0o600
    assert [path.name for path in tmp_path.iterdir()] == [stack.layout.state_file.name]


def test_the_workers_go_through_the_pooler_and_the_migrations_straight(tmp_path: Path) -> None:
    stack = stack_in(tmp_path)
    stack.save(StackState(database_url=URL).through("pgbouncer", POOLED))
    assert stack.service_env()["DATABASE_URL"] == POOLED
    assert stack.migration_env()["DATABASE_URL"] == URL
    assert stack.service_env()["DB_POOLER"] == "pgbouncer"
    stack.save(StackState(database_url=URL))
    assert stack.service_env()["DATABASE_URL"] == URL
    assert stack.service_env()["DB_POOLER"] == "none"


@pytest.mark.parametrize(
    ("old", "expected"),
    [
        (
            {"database_url": URL, "private_postgres": "1", "pooler": "none"},
            StackState(database_url=URL, private_postgres=True),
        ),
        (
            {
                "database_url": URL,
                "private_postgres": "",
                "pooler": "pgbouncer",
                "pooled_url": POOLED,
            },
            StackState(
                database_url=URL, private_postgres=False, pooler="pgbouncer", pooled_url=POOLED
            ),
        ),
        # An app host's: no private_postgres at all.
        (
            {"database_url": POOLED, "pooler": "pgbouncer", "pooled_url": POOLED},
            StackState(database_url=POOLED, pooler="pgbouncer", pooled_url=POOLED),
        ),
        # Before PgBouncer: no pooler at all.
        (
            {"database_url": URL, "private_postgres": "1"},
            StackState(database_url=URL, private_postgres=True),
        ),
    ],
    ids=["private", "pooled", "app-host", "no-pooler"],
)
def test_an_older_runners_state_is_still_read(
    tmp_path: Path, old: dict[str, str], expected: StackState
) -> None:
    stack = stack_in(tmp_path)
    stack.layout.state_file.write_text(json.dumps(old))
    assert stack.saved() == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "Invalid JSON"),
        ("[]", "Input should be an object"),
        (json.dumps({"pooler": "none"}), "database_url: Field required"),
        (json.dumps({"database_url": URL, "private_postgres": "yes"}), "private_postgres: "),
        (json.dumps({"database_url": URL, "private_postgres": 1}), "private_postgres: "),
        (json.dumps({"database_url": URL, "pooler": "pgpool"}), "pooler: "),
        (json.dumps({"database_url": URL, "pooled_url": 5}), "pooled_url: "),
        (json.dumps({"database_url": URL, "pooler": "pgbouncer"}), "without its pooled_url"),
        (json.dumps({"database_url": URL, "password": "x"}), "password: "),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "no-url",
        "boolean-as-word",
        "boolean-as-number",
        "unknown-pooler",
        "url-not-a-string",
        "pooler-without-url",
        "unknown-key",
    ],
)
def test_a_state_file_this_runner_did_not_write_is_refused_by_name(
    tmp_path: Path, text: str, reason: str
) -> None:
    stack = stack_in(tmp_path)
    stack.layout.state_file.write_text(text)
    with pytest.raises(StateFileError) as refused:
        stack.saved()
    message = str(refused.value)
    assert str(stack.layout.state_file) in message
    assert reason in message
    assert "make down, then make up" in message
