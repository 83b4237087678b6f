"""An app's own dependencies, installed beside the stack's locked ones.

An app served with `APP_PATH=dir` brings what it needs beyond the stack in `dir`'s
`requirements.txt`, else in the `[project] dependencies` of `dir`'s `pyproject.toml`. Before
its migrations or its workers run, `make up` installs them into the stack's environment with
`uv pip install`, constrained to the versions the stack runs now (`uv.lock`, as installed):
a requirement that would move one of them fails the start and names the conflict, instead of
quietly running the stack on versions it was not tested with. `make install` (`uv sync`)
removes them again; the next `make up` puts them back (from uv's cache: a fraction of a
second).
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from deploy.native.processes import fail, log
from service.config import ROOT


def requirements(app_path: Path) -> Path | None:
    """The file that says what the app at `app_path` needs, if it has one."""
    for name in ("requirements.txt", "pyproject.toml"):
        candidate = app_path / name
        # The stack's own pyproject.toml is already installed: it is uv.lock.
        if candidate.is_file() and app_path.resolve() != ROOT:
            return candidate
    return None


def uv_binary() -> str:
    """The uv this project runs: the one `make install` put in .tools/bin, else uv on PATH."""
    bundled = ROOT / ".tools" / "bin" / "uv"
    found = str(bundled) if bundled.is_file() else shutil.which("uv")
    if found is None:
        fail("uv not found: make install puts it in .tools/bin")
    return found


def install(app_path: Path) -> None:
    """Install the requirements of the app at `app_path`, pinned around the stack's."""
    wanted = requirements(app_path)
    if wanted is None:
        return
    uv = uv_binary()
    frozen = subprocess.run(
        [uv, "pip", "freeze", "--python", sys.executable],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # The stack's own project is installed editable: not a version to hold.
    pins = [line for line in frozen.splitlines() if "==" in line]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="stack-pins-") as constraints:
        constraints.write("\n".join(pins) + "\n")
        constraints.flush()
        # Code, not secrets: readable by the user the workers run as, whatever the runner's
        # own umask (077).
        result = subprocess.run(
            [uv, "pip", "install", "--python", sys.executable, "-r", str(wanted),
             "-c", constraints.name],
            capture_output=True,
            text=True,
            check=False,
            umask=0o022,
        )  # fmt: skip
    if result.returncode != 0:
        fail(
            f"the app's requirements ({wanted}) do not fit the stack's locked dependencies "
            f"(uv.lock):\n{result.stderr.strip()}"
        )
    log(f"app: requirements of {wanted} installed beside the stack's")
