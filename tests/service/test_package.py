"""`service/` is the app and what gunicorn.conf.py needs, and the image ships it alone (with
migrations/): nothing in it may import the stack around it."""

import ast
from pathlib import Path

from service.config import ROOT

# What the Dockerfile copies as Python code, and the repo's packages it leaves out.
SHIPPED = [ROOT / "gunicorn.conf.py", *sorted((ROOT / "service").rglob("*.py"))]
SHIPPED += sorted((ROOT / "migrations").rglob("*.py"))
LEFT_OUT = {"deploy", "loadtest", "tests"}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages `path` imports (absolute imports only; relative ones stay in)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def test_the_shipped_code_imports_nothing_the_image_leaves_out() -> None:
    assert (ROOT / "service" / "config.py") in SHIPPED
    assert "service" in imported_packages(ROOT / "gunicorn.conf.py")
    reaching_out = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & LEFT_OUT)
        for path in SHIPPED
        if imported_packages(path) & LEFT_OUT
    }
    assert not reaching_out
