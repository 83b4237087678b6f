"""gunicorn: start, wait for ready workers, reload without dropping a request, scale live."""

import json
import os
import signal
import sys
import time
from pathlib import Path

from deploy.native import accounts
from deploy.native.processes import (
    alive,
    children,
    fail,
    log,
    log_tail,
    read_pid,
    spawn,
    stop_process,
    wait_for,
)
from deploy.native.state import Stack
from service.config import ROOT, ConfigurationError
from service.runtime.capacity import Budget, BudgetExceededError, MeasuredPools, check_budget
from service.runtime.layout import GunicornLayout


def master(stack: Stack) -> int | None:
    """The serving master's pid, if it runs."""
    return read_pid(stack.layout.gunicorn_pidfile)


def ready_workers(layout: GunicornLayout, master_pid: int) -> list[int]:
    """Workers of `master_pid` whose app has started and serves."""
    return [pid for pid in children(master_pid) if layout.ready_marker(pid).exists()]


def wait_workers(stack: Stack, master_pid: int, count: int, timeout: float = 90) -> bool:
    """Wait until `master_pid` has exactly `count` workers, all ready; False if the master
    exits or the time runs out first."""
    deadline = time.monotonic() + timeout
    while alive(master_pid) and time.monotonic() < deadline:
        pids = children(master_pid)
        if len(pids) == count and len(ready_workers(stack.layout, master_pid)) == count:
            return True
        time.sleep(0.1)
    return False


def start(stack: Stack, env: dict[str, str], workers: int) -> int:
    """Start the master in its own session and wait for `workers` ready workers."""
    # The console script, not `python -m gunicorn`: USR2 re-executes the master's argv, and
    # `python .../gunicorn/__main__.py` would put gunicorn's package dir (with its own `http`
    # module) first on sys.path.
    argv = [
        str(Path(sys.executable).parent / "gunicorn"),
        "--config",
        str(ROOT / "gunicorn.conf.py"),
    ]
    service = accounts.unprivileged(stack.settings.service_user)
    interpreter = Path(sys.executable).resolve()
    accounts.readable_by(service, interpreter, ROOT, Path(env.get("APP_PATH") or ROOT))
    # Its own directory, which only its group may enter: nginx's workers, whose group it is.
    # The socket in it is 0770; the rest is gunicorn's alone (made under a umask of 077).
    accounts.own(stack.layout.gunicorn_dir, service, 0o750 if service is not None else 0o700)
    # Its log, which it reopens (as its own user) when the rotator renames it.
    app_log = stack.layout.app_log
    app_log.touch(mode=0o600)
    if service is not None:
        os.chown(app_log, service.uid, service.gid)
    env = {**env, "LOG_FILE": str(app_log)}
    process = spawn(app_log, argv, env=env, account=service)

    def fail_if_exited() -> None:
        # Its last lines say why: a refused connection budget, a bad setting, an import error.
        if process.poll() is not None:
            fail(f"gunicorn exited during start:\n{log_tail(stack.layout.app_log, 15)}")

    def pidfile_written() -> bool:
        fail_if_exited()
        return read_pid(stack.layout.gunicorn_pidfile) == process.pid

    wait_for("gunicorn's pid file", pidfile_written, 30)
    if not wait_workers(stack, process.pid, workers):
        # gunicorn writes its pid file before its on_starting hook (the budget check) runs.
        fail_if_exited()
        fail(f"{workers} gunicorn workers did not get ready; see {stack.layout.app_log}")
    return process.pid


def measured_pools(layout: GunicornLayout, master_pid: int) -> MeasuredPools | None:
    """What the ready workers of `master_pid` measured of the app's pools (their ready
    markers, written by the stack once the app's lifespan has started): the most connections
    one worker's engines open, or None when the app made no engine (or an unbounded one), and
    the budget counts DB_POOL_SIZE + DB_MAX_OVERFLOW as declared."""
    reports = []
    for pid in ready_workers(layout, master_pid):
        try:
            reports.append(json.loads(layout.ready_marker(pid).read_text() or "{}"))
        except (OSError, ValueError):
            continue  # a worker gone meanwhile, or a marker being written
    engines = max((int(report.get("engines") or 0) for report in reports), default=0)
    if not engines:
        return None
    capacities = [report.get("pool_capacity") for report in reports]
    if any(capacity is None for capacity in capacities):
        log("connection budget: the app has a pool without a bound (NullPool, or "
            "max_overflow=-1); counting DB_POOL_SIZE + DB_MAX_OVERFLOW instead")  # fmt: skip
        return None
    return MeasuredPools(per_worker=max(int(c) for c in capacities), engines=engines)


def budget(stack: Stack, workers: int, measured: MeasuredPools | None = None) -> Budget:
    """The connection budget of `workers` against the stack's database, each worker's pools
    as `measured`, else as declared; fail if it does not fit, naming the fixes."""
    try:
        return check_budget(stack.app_settings(), workers, measured)
    except (BudgetExceededError, ConfigurationError) as exc:
        fail(str(exc))
    except (OSError, TimeoutError) as exc:
        fail(f"connection budget not checked, the database does not answer: {exc}")


def budget_check(stack: Stack, workers: int) -> None:
    """Refuse a worker count whose pools would not fit the database: the pools the running
    app's engines open, measured, else DB_POOL_SIZE + DB_MAX_OVERFLOW."""
    pid = master(stack)
    measured = measured_pools(stack.layout, pid) if pid else None
    log(f"connection budget ok: {budget(stack, workers, measured).describe()}")


def check_measured_budget(stack: Stack, master_pid: int, workers: int) -> None:
    """Once the workers have started: the budget again, with the pools their app really
    opened. gunicorn's own check, before any worker, could only count the declared ones. If
    they do not fit, stop gunicorn and fail, as that check would have."""
    measured = measured_pools(stack.layout, master_pid)
    if measured is None:
        return
    try:
        found = check_budget(stack.app_settings(), workers, measured)
    except BudgetExceededError as exc:
        stop_process("gunicorn", master_pid, signal.SIGTERM, 45)
        fail(str(exc))
    except (OSError, TimeoutError, ConfigurationError) as exc:
        log(f"connection budget not checked with the measured pools: {exc}")
        return
    log(f"connection budget ok: {found.describe()}")


def reload(stack: Stack) -> None:
    """New code and config with zero failed requests.

    gunicorn's HUP stops the old workers as soon as new ones are forked, before they can
    serve (benoitc/gunicorn#3394). Instead: USR2 starts a new master with new workers beside
    the old ones on the same socket; once every new worker is ready, TERM makes the old
    master drain and exit. If the new code does not start, the old master keeps serving.
    Old and new workers overlap until the old ones drain: check the budget for both first.
    """
    old = master(stack)
    if not old:
        fail("gunicorn is not running: make up first")
    workers = len(children(old))
    os.kill(old, signal.SIGUSR2)
    # The new master writes gunicorn.pid.2 and takes gunicorn.pid once the old one is gone.
    pidfile = stack.layout.reloading_pidfile
    wait_for("the new gunicorn master", lambda: read_pid(pidfile) is not None, 30)
    new = read_pid(pidfile)
    if new is None:
        fail("the new gunicorn master exited at once; the old one keeps serving. See app.log")
    if not wait_workers(stack, new, workers):
        if alive(new):
            stop_process("new gunicorn", new, signal.SIGTERM, 45)
        fail(f"new workers did not start; master {old} keeps serving. See app.log")
    log(f"gunicorn: new master {new} with {workers} ready workers; retiring master {old}")
    stop_process("old gunicorn", old, signal.SIGTERM, 45)
    wait_for("the new master to take over", lambda: master(stack) == new, 15)


def scale(stack: Stack, target: int) -> None:
    """Change the number of workers live, one TTIN/TTOU at a time."""
    if target < 1:
        fail("WORKERS must be at least 1")
    pid = master(stack)
    if not pid:
        fail("gunicorn is not running: make up first")
    budget_check(stack, target)
    # One signal at a time: gunicorn's signal queue holds only five.
    current = len(children(pid))
    while current != target:
        step = 1 if target > current else -1
        os.kill(pid, signal.SIGTTIN if step > 0 else signal.SIGTTOU)
        current += step
        if not wait_workers(stack, pid, current):
            fail(f"gunicorn did not reach {current} ready workers; see app.log")
    log(f"gunicorn: {target} workers {children(pid)}")


def stop(stack: Stack) -> None:
    """TERM every master (a reload's too): workers drain their requests, then exit."""
    for pidfile in (stack.layout.reloading_pidfile, stack.layout.gunicorn_pidfile):
        pid = read_pid(pidfile)
        if pid:
            workers = children(pid)
            stop_process("gunicorn", pid, signal.SIGTERM, 45)
            for worker in workers:
                if alive(worker):
                    os.kill(worker, signal.SIGKILL)
            log(f"gunicorn: master {pid} stopped")
