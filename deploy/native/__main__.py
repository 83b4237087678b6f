"""The native stack's command line: `python -m deploy.native COMMAND` (what `make` runs).

    up        start what is not running, wait for /readyz through nginx
    down      stop everything it started, gracefully, and free every port
    status    each component, its pid, and the live worker pids (exit 3 if one is down)
    logs      follow every log under $RUN_DIR/logs
    reload    new code and config, zero failed requests (USR2, wait, TERM old)
    scale N   N workers, live (TTIN/TTOU), after the connection budget check

gunicorn supervises its workers, nginx and PostgreSQL their own processes; this runner only
starts, signals and waits. Knobs: service.config.StackSettings (RUN_DIR and the ports),
DATABASE_URL (default: the private cluster), WEB_CONCURRENCY and every app setting.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable

from deploy.native import gunicorn, monitoring, nginx, pgbouncer, postgres
from deploy.native.processes import (
    StackError,
    children,
    fail,
    http_status,
    log,
    port_open,
    read_pid,
    run_helper,
)
from deploy.native.state import Stack
from service.runtime.capacity import default_workers


def up(stack: Stack) -> None:
    """Start whatever is not running; return once /readyz answers 200 through nginx."""
    layout = stack.layout
    for directory in (layout.logs, layout.nginx_dir, layout.ready_dir):
        directory.mkdir(parents=True, exist_ok=True)
    run_helper("install-deps", "nginx", "prometheus")

    running = gunicorn.master(stack)
    _database(stack, stack.saved() if running else {})
    env = stack.service_env()

    if running:
        log(f"gunicorn: already running (master {running})")
    else:
        for port in (stack.settings.http_port, stack.settings.ops_port):
            if port_open(port) and not nginx.pid(stack):
                fail(f"port {port} is taken by another program; set HTTP_PORT/OPS_PORT")
        workers = int(env.get("WEB_CONCURRENCY") or 0) or default_workers()
        running = gunicorn.start(stack, env, workers)
        log(f"gunicorn: master {running}, {workers} workers ready")

    nginx.start(stack)
    monitoring.start_exporter(stack)
    monitoring.start_prometheus(stack)
    ready = f"{stack.public_url}/readyz"
    if not _eventually(lambda: http_status(ready) == 200):
        fail(f"{ready} did not answer 200 within 60s")
    log("ready")
    for name, url in (
        ("API", f"{stack.public_url}/api/v1/notes"),
        ("docs", f"{stack.public_url}/docs"),
        ("metrics", f"{stack.ops_url}/metrics"),
        ("nginx", f"{stack.ops_url}/stub_status"),
        ("prometheus", stack.prometheus_url),
        ("logs", f"{layout.logs}/"),
    ):
        print(f"  {name:<11} {url}")


def _database(stack: Stack, state: dict[str, str]) -> None:
    """The database (DATABASE_URL, or the private cluster started), migrated, and PgBouncer in
    front of it with POOLER=pgbouncer. A running stack keeps what it was started with."""
    pooler = stack.settings.pooler
    if not state:
        state = postgres.ensure_database(stack)
        state["pooler"] = pooler
        if pooler == "pgbouncer":
            state["pooled_url"] = pgbouncer.pooled_url(stack, state["database_url"])
        stack.save(state)
    else:
        ran_with = state.get("pooler") or "none"
        if "pooler" in stack.settings.model_fields_set and pooler != ran_with:
            fail(f"the stack runs with POOLER={ran_with}: make down, then make up POOLER={pooler}")
        if state.get("private_postgres"):
            postgres.start_private(stack)
    postgres.migrate(stack.migration_env())
    if state.get("pooler") == "pgbouncer":
        run_helper("install-deps", "pgbouncer")
        pgbouncer.start(stack, state["database_url"])


def _eventually(check: Callable[[], bool], seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def down(stack: Stack) -> None:
    """Stop Prometheus, nginx, gunicorn and the private cluster; check every port is free."""
    state = stack.saved()
    monitoring.stop(stack)
    nginx.stop(stack)
    gunicorn.stop(stack)
    pgbouncer.stop(stack)
    if state.get("private_postgres") or (stack.layout.postgres_dir / "postmaster.pid").exists():
        postgres.stop_private(stack)
        log("postgres: stopped")
    stack.layout.state_file.unlink(missing_ok=True)
    settings = stack.settings
    ports = (
        settings.http_port,
        settings.ops_port,
        settings.prometheus_port,
        settings.nginx_exporter_port,
        *([settings.pgbouncer_port] if state.get("pooler") == "pgbouncer" else []),
    )
    busy = [port for port in ports if port_open(port)]
    if busy:
        fail(f"ports still answering after down: {busy}")
    log("down")


def status(stack: Stack) -> None:
    """Print each component with its pid and the live worker pids; exit 3 if any is down."""
    state = stack.saved()
    private = state.get("private_postgres")
    print(f"postgres  {'private cluster' if private else ('DATABASE_URL' if state else 'unknown')}")
    if state.get("pooler") == "pgbouncer":
        bouncer = read_pid(stack.layout.pidfile(pgbouncer.NAME))
        print(f"pgbouncer {'pid ' + str(bouncer) if bouncer else 'stopped'}")
    master = gunicorn.master(stack)
    if master:
        workers = children(master)
        ready = gunicorn.ready_workers(stack.layout, master)
        print(f"gunicorn  master {master}, {len(workers)} workers {workers}, ready {ready}")
    else:
        print("gunicorn  stopped")
    nginx_pid = nginx.pid(stack)
    print(f"nginx     {'pid ' + str(nginx_pid) if nginx_pid else 'stopped'}")
    for name in monitoring.DAEMONS:
        daemon = read_pid(stack.layout.pidfile(name))
        print(f"{name:<15} {'pid ' + str(daemon) if daemon else 'stopped'}")
    ready_status = http_status(f"{stack.public_url}/readyz")
    print(f"readyz    {ready_status or 'no answer'} ({stack.public_url}/readyz)")
    if not (master and nginx_pid and ready_status == 200):
        sys.exit(3)


def logs(stack: Stack) -> None:
    """Follow every log file of the stack."""
    files = sorted(str(path) for path in stack.layout.logs.glob("*.log"))
    if not files:
        fail(f"no logs in {stack.layout.logs}: is the stack up?")
    os.execvp("tail", ["tail", "-n", "20", "-F", *files])  # noqa: S606 (replaces this process)


def reload(stack: Stack) -> None:
    """New code and config with zero failed requests."""
    master = gunicorn.master(stack)
    if not master:
        fail("gunicorn is not running: make up first")
    # Old and new workers overlap until the old ones drain: both sets of pools must fit.
    gunicorn.budget_check(stack, 2 * len(children(master)))
    nginx.reload_if_changed(stack)
    gunicorn.reload(stack)
    log("reloaded")


def main() -> None:
    """Parse the command line and run the command; a StackError ends it with its message."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.native", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "logs", "reload"):
        commands.add_parser(name)
    commands.add_parser("scale").add_argument("workers", type=int)
    args = parser.parse_args()
    stack = Stack.from_environment()
    try:
        if args.command == "scale":
            gunicorn.scale(stack, args.workers)
        else:
            {"up": up, "down": down, "status": status, "logs": logs, "reload": reload}[
                args.command
            ](stack)
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
