"""Who the serving processes run as: never root.

Started as root, the runner runs gunicorn (its master and every worker), Prometheus and the
nginx exporter as SERVICE_USER, a system account with no login and no home that it creates
when missing (`stack` by default), and nginx's workers as NGINX_USER (`www-data`, Debian's);
nginx's master stays root only to read its config and open its ports and logs, as Debian runs
it. PostgreSQL runs as `postgres` and PgBouncer as `nobody`, as they always did. Started as
another user, everything runs as that user.

gunicorn's socket sits in a directory of its own, the service account's, which only its group
may enter (0750), and is made 0770 in it; nginx's workers run with that group. Only gunicorn,
nginx's workers and root may connect, so the forwarded headers gunicorn trusts on it come
from nginx alone.
"""

import contextlib
import fcntl
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy.native.processes import fail, log


@dataclass(frozen=True)
class Account:
    """A user the runner starts processes as."""

    name: str
    uid: int
    gid: int
    home: str

    def environment(self, env: dict[str, str] | None) -> dict[str, str]:
        """`env` (else the runner's) as this user's: its own HOME, where libraries look for
        their files (asyncpg for client certificates), not root's, which it cannot read."""
        return {**(os.environ if env is None else env), "HOME": self.home, "USER": self.name,
                "LOGNAME": self.name}  # fmt: skip


def account(name: str) -> Account:
    """The system account `name`, made (no login, no home) when missing."""
    # One runner at a time looks the name up and makes it: useradd does not serialise itself
    # here, and four runners starting at once each made the account, with two different uids.
    with _accounts_lock():
        return _account(name)


@contextlib.contextmanager
def _accounts_lock() -> Iterator[None]:
    """An exclusive lock shared by every runner on this machine (root's: only root makes
    accounts)."""
    directory = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
    descriptor = os.open(
        directory / "stack-accounts.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600
    )
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _account(name: str) -> Account:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            fail(f"cannot create the system user {name}: {result.stderr.strip()}")
        log(f"accounts: created the system user {name}")
        entry = pwd.getpwnam(name)
    return Account(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def unprivileged(name: str) -> Account | None:
    """The account `name` (made when missing) when the runner is root, to run a process as;
    None otherwise: the process runs as the runner's own user."""
    return account(name) if os.geteuid() == 0 else None


def own(path: Path, owner: Account | None, mode: int) -> None:
    """`path` (a directory, made if missing) owned by `owner` and its group, of `mode`."""
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
    path.chmod(mode)


def readable_by(owner: Account | None, *paths: Path) -> None:
    """Fail, naming the path, unless `owner` can read `paths` (the code it runs, the app)."""
    if owner is None:
        return
    for path in paths:
        check = subprocess.run(
            ["setpriv", f"--reuid={owner.uid}", f"--regid={owner.gid}", "--clear-groups",
             "test", "-r", str(path), "-a", "-x", str(path)],
            capture_output=True, check=False,
        )  # fmt: skip
        if check.returncode != 0:
            fail(
                f"the service user {owner.name} cannot read {path}: the serving processes do "
                "not run as root. Put the checkout where other users can read it (not under "
                "a private home such as /root), or give it to that user"
            )


def group_name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name
