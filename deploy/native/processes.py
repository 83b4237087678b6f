"""Processes the runner starts, finds, waits for and stops (through psutil, not /proc)."""

import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import psutil

from service.config import ROOT

if TYPE_CHECKING:
    from deploy.native.accounts import Account


def log(message: str) -> None:
    """One progress line for the person at the terminal."""
    print(f"stack: {message}", flush=True)


class StackError(RuntimeError):
    """Something the stack cannot do, said so that a person can act on it."""


def fail(message: str) -> NoReturn:
    """Stop the current command with a message that says what went wrong."""
    raise StackError(message)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def children(pid: int) -> list[int]:
    """The live child processes of `pid`, sorted."""
    try:
        kids = psutil.Process(pid).children()
    except psutil.Error:
        return []
    return sorted(kid.pid for kid in kids if alive(kid.pid))


def read_pid(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that process is alive."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    """Poll `check` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def log_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of the log at `path`: what a program said before it stopped."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_started(
    what: str,
    process: "subprocess.Popen[bytes]",
    ready: Callable[[], bool],
    timeout: float,
    *,
    doing: str,
    log_file: Path,
    pidfile: Path,
    interval: float = 0.1,
) -> None:
    """Poll `ready` as `wait_for` does, but fail at once when `process` exits instead of
    `doing` what it was started for, with the last lines of its log (and its pid file gone)."""
    wait_for(what, lambda: ready() or process.poll() is not None, timeout, interval)
    if process.poll() is not None:
        pidfile.unlink(missing_ok=True)
        exited = f"{what} exited ({process.returncode}) instead of {doing}"
        fail(f"{exited}:\n{log_tail(log_file, 10)}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def children_cpu_seconds() -> float:
    """User and system CPU of every child process this one has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on `host`:`port`."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of GET `url`, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (local URL)
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def stop_process(name: str, pid: int, sig: signal.Signals, timeout: float) -> None:
    """Send `sig`, wait for the process to exit, then SIGKILL it as a last resort."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        log(f"{name} (pid {pid}) did not stop within {timeout:g}s: killing it")
        os.kill(pid, signal.SIGKILL)


def spawn(
    log_file: Path,
    argv: list[str],
    env: dict[str, str] | None = None,
    account: "Account | None" = None,
) -> "subprocess.Popen[bytes]":
    """Start a long-running program in its own session, appending its output to `log_file`;
    as `account` (its user and group, no other group) when given, and creating its files
    under a umask of 077 either way."""
    as_account: dict[str, Any] = {}
    if account is not None:
        as_account = {"user": account.uid, "group": account.gid, "extra_groups": []}
        env = account.environment(env)
    with log_file.open("ab") as output:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=0o077,
            **as_account,
        )


def run_helper(*argv: str | Path) -> None:
    """Run one of the shell helpers next to this file; it prints its own error."""
    result = subprocess.run([Path(__file__).parent / argv[0], *argv[1:]], check=False)
    if result.returncode != 0:
        fail(f"{argv[0]} {' '.join(str(arg) for arg in argv[1:])} failed (its message is above)")
