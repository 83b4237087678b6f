"""Logs bounded by size: every file in `.run/logs/` rotated once it reaches LOG_ROTATE_SIZE,
LOG_KEEP old ones kept (`<name>.1` the newest), the oldest deleted.

Nothing is lost, and nothing is copied: a log is renamed, and the process that writes it opens
a new one, as Debian's logrotate does for nginx. nginx's master reopens its logs on
`nginx -s reopen` (SIGUSR1); gunicorn's master and each worker reopen `app.log` on SIGUSR1
(gunicorn's own `capture_output`, which gunicorn.conf.py turns on with LOG_FILE). Until a
process has reopened, its lines go on into the renamed file. The daemons that cannot reopen
(Prometheus, the nginx exporter, PgBouncer, the rotator itself) write a few lines an hour:
theirs are copied, then truncated, which may drop a line written between the two.

`make rotate-logs` rotates every log that has anything in it, now; `make up` starts the
rotator (`python -m deploy.native rotate-logs --watch`), which checks the sizes every second,
so a file grows past LOG_ROTATE_SIZE by at most what is written to it in a second.
"""

import os
import shutil
import signal
import sys
import time
from pathlib import Path

from deploy.native import nginx
from deploy.native.processes import log, read_pid, spawn, stop_process
from deploy.native.state import Stack

CHECK_INTERVAL_SECONDS = 1.0
NAME = "log-rotator"


def _shift(path: Path, keep: int) -> None:
    """Make room for `path.1`: `path.N` becomes `path.N+1`, and what would pass `keep` goes."""
    path.with_name(f"{path.name}.{keep}").unlink(missing_ok=True)
    for number in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{number}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{number + 1}"))


def _reopens(stack: Stack) -> dict[Path, str]:
    """The logs whose writers reopen them on a signal, and which writer."""
    layout = stack.layout
    return {
        layout.nginx_access_log: "nginx",
        layout.nginx_error_log: "nginx",
        layout.app_log: "gunicorn",
    }


def _gunicorn_masters(stack: Stack) -> list[int]:
    """The serving master, and the one a reload started while both run."""
    pids = (read_pid(stack.layout.gunicorn_pidfile), read_pid(stack.layout.reloading_pidfile))
    return [pid for pid in pids if pid]


def rotate(stack: Stack, size: int, keep: int, *, every: bool = False) -> list[str]:
    """Rotate each log of at least `size` bytes (with `every`, each that is not empty); the
    names of those rotated."""
    reopens = _reopens(stack)
    signalled: set[str] = set()
    rotated = []
    for path in sorted(stack.layout.logs.glob("*.log")):
        length = path.stat().st_size
        if length == 0 or (length < size and not every):
            continue
        _shift(path, keep)
        writer = reopens.get(path)
        if writer is None:
            # A daemon that cannot reopen: copy, then truncate (it appends: O_APPEND).
            shutil.copyfile(path, path.with_name(f"{path.name}.1"))
            os.truncate(path, 0)
        else:
            owner = path.stat()
            path.rename(path.with_name(f"{path.name}.1"))
            # The new file first, as its writer had it: gunicorn reopens it as its own user.
            path.touch(mode=0o600)
            os.chown(path, owner.st_uid, owner.st_gid)
            signalled.add(writer)
        rotated.append(path.name)
    if "nginx" in signalled and nginx.pid(stack):
        nginx.run(stack, "-s", "reopen")
    if "gunicorn" in signalled:
        for master in _gunicorn_masters(stack):
            os.kill(master, signal.SIGUSR1)
    return rotated


def watch(stack: Stack, size: int, keep: int) -> None:
    """Rotate what has grown to `size`, every second, until SIGTERM."""
    running = True

    def stop(signum: int, frame: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    log(f"log rotator: every log at {size} bytes, {keep} kept")
    while running:
        try:
            for name in rotate(stack, size, keep):
                log(f"rotated {name}")
        except OSError as exc:  # a log removed meanwhile (`make down`); try again
            log(f"log rotator: {exc}")
        time.sleep(CHECK_INTERVAL_SECONDS)


def start(stack: Stack) -> None:
    """The rotator, unless it runs: a daemon of the runner's own user, which may signal
    nginx's master and hand a new app.log to gunicorn's user."""
    pidfile = stack.layout.pidfile(NAME)
    if read_pid(pidfile):
        return
    argv = [sys.executable, "-m", "deploy.native", "rotate-logs", "--watch"]
    pid = spawn(stack.layout.daemon_log(NAME), argv, env=dict(os.environ)).pid
    pidfile.write_text(str(pid))
    log(f"log rotator: pid {pid}")


def stop(stack: Stack) -> None:
    """Stop the rotator if it runs."""
    pidfile = stack.layout.pidfile(NAME)
    pid = read_pid(pidfile)
    if pid:
        stop_process(NAME, pid, signal.SIGTERM, 10)
    pidfile.unlink(missing_ok=True)
