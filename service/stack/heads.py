"""The revisions of a directory of Alembic migrations, as /readyz compares them."""

import ast
from dataclasses import dataclass
from pathlib import Path

VERSIONS_DIR = Path(__file__).resolve().parents[2] / "migrations" / "versions"


@dataclass(frozen=True, slots=True)
class Revisions:
    """Every revision this code ships, and the heads among them."""

    known: frozenset[str]
    heads: frozenset[str]

    def __or__(self, other: "Revisions") -> "Revisions":
        return Revisions(self.known | other.known, self.heads | other.heads)

    def behind(self, current: str | None) -> bool:
        """Whether a database at `current` lacks migrations this code ships: no revision, or
        one of this code's own short of a head. A revision this code does not know is
        ahead of it: the next release's expand step, which this code must tolerate."""
        return current is None or (current in self.known and current not in self.heads)


def alembic_revisions(versions_dir: Path = VERSIONS_DIR) -> Revisions:
    """The revisions of the migrations shipped with this code.

    Read from the revision files' `revision` and `down_revision` assignments rather than
    through Alembic, whose import costs each worker 0.6 s of start time; a test checks that
    the answer equals Alembic's own.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions_dir.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            target: ast.expr
            if isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            else:
                continue
            if not isinstance(target, ast.Name):
                continue
            if target.id == "revision":
                revisions.add(ast.literal_eval(value))
            elif target.id == "down_revision":
                parent = ast.literal_eval(value)
                parents.update([parent] if isinstance(parent, str) else parent or ())
    return Revisions(frozenset(revisions), frozenset(revisions - parents))


def alembic_heads(versions_dir: Path = VERSIONS_DIR) -> frozenset[str]:
    """The head revisions of the migrations shipped with this code."""
    return alembic_revisions(versions_dir).heads
