"""The native stack's command line: `python -m deploy.native COMMAND` (what `make` runs).

    up        start what is not running, wait for /readyz through nginx
    down      stop everything it started, gracefully, and free every port
    status    each component, its pid, and the live worker pids (exit 3 if one is down)
    logs      follow every log under $RUN_DIR/logs
    reload    new code and config, zero failed requests (USR2, wait, TERM old)
    migrate   the app's migrations to head, waiting for traffic, never traffic for them
    release   migrate, then reload, then report: the running code keeps serving if either
              step fails
    scale N   N workers, live (TTIN/TTOU), after the connection budget check

gunicorn supervises its workers, nginx and PostgreSQL their own processes; this runner only
starts, signals and waits. Knobs: deploy.native.settings.StackSettings (RUN_DIR, the ports,
and STACK_ROLE: all of the stack on this host, or some of its parts on one of several hosts,
as deploy.native.roles lays out), DATABASE_URL (default: the private cluster),
WEB_CONCURRENCY and every app setting; APP, APP_PATH and MIGRATIONS name the app it serves
(service.config.WorkerSettings), whose requirements it installs first (deploy.native.app_deps).
"""

import argparse
import os
import sys
import time

from deploy.native import gunicorn, lifecycle, nginx, postgres, rotation, seed
from deploy.native.lifecycle import down, status, up
from deploy.native.processes import StackError, children, fail, http_status, log
from deploy.native.roles import Part
from deploy.native.state import Stack

# How long `release` waits for the new code's /readyz once the reload is done.
READY_SECONDS = 30


def logs(stack: Stack) -> None:
    """Follow every log file of the stack."""
    files = sorted(str(path) for path in stack.layout.logs.glob("*.log"))
    if not files:
        fail(f"no logs in {stack.layout.logs}: is the stack up?")
    os.execvp("tail", ["tail", "-n", "20", "-F", *files])  # noqa: S606 (replaces this process)


def reload(stack: Stack) -> None:
    """New code and config with zero failed requests (on a proxy host: nginx's config)."""
    role = stack.role
    serves, proxies = role.runs(Part.APP), role.runs(Part.PROXY)
    if not serves and not proxies:
        fail(f"nothing to reload on the {role.name} host: reload the app hosts one by one")
    if serves:
        master = gunicorn.master(stack)
        if not master:
            fail("gunicorn is not running: make up first")
        # Old and new workers overlap until the old ones drain: both sets of pools must fit.
        gunicorn.budget_check(stack, 2 * len(children(master)))
    if proxies:
        nginx.reload_if_changed(stack)
    if serves:
        gunicorn.reload(stack)
    log("reloaded")


def migrate(stack: Stack) -> None:
    """`make migrate`: the app's migrations to head, as the owner of the database this stack
    runs on (its password from the secrets), else on DATABASE_URL."""
    if stack.saved() is None or not stack.role.runs(Part.DATABASE):
        postgres.migrate(dict(os.environ))
        return
    postgres.migrate(stack.migration_env())
    log("migrated")


def release(stack: Stack) -> None:
    """`make release`: the new code's migrations (its expand step, which the running code
    must tolerate), then a reload to the new code, then a report. A migration that cannot
    take its lock gives up (MIGRATION_LOCK_TIMEOUT, MIGRATION_ATTEMPTS) with nothing of its
    revision applied, and the reload never starts: the running code keeps serving."""
    role = stack.role
    if not role.runs(Part.APP) or not role.runs(Part.DATABASE):
        fail(
            f"make release runs the migrations and the reload on one host, and the "
            f"{role.name} host runs only some of them: make migrate on the database host, "
            f"then make reload on each app host, one at a time"
        )
    if not gunicorn.master(stack):
        fail("gunicorn is not running: make up first")
    started = time.monotonic()
    try:
        migrate(stack)
    except StackError as exc:
        fail(f"{exc}\nrelease stopped before the reload: the running code keeps serving")
    migrated = time.monotonic()
    reload(stack)
    reloaded = time.monotonic()
    url = lifecycle.readiness_url(stack)
    # Asked until it answers, as `up` asks: right after the old master hands over, one
    # probe in a few releases got no answer at all from a stack that served on.
    if url and not lifecycle.eventually(lambda: http_status(url) == 200, READY_SECONDS):
        fail(f"released, but {url} did not answer 200 within {READY_SECONDS}s: see the app log")
    workers = len(children(gunicorn.master(stack) or 0))
    log(
        f"released: migrations {migrated - started:.1f}s, reload {reloaded - migrated:.1f}s; "
        f"{workers} workers of the new code ready"
    )


def rotate_logs(stack: Stack, *, watch: bool) -> None:
    """`make rotate-logs`: every log with anything in it, now; with `watch`, the rotator
    `up` starts, by size, until SIGTERM."""
    size, keep = stack.settings.log_rotate_size, stack.settings.log_keep
    if watch:
        rotation.watch(stack, size, keep)
        return
    rotated = rotation.rotate(stack, size, keep, every=True)
    log(f"rotated: {', '.join(rotated) or 'nothing (every log is empty)'}")


def dev(stack: Stack) -> None:
    """`make dev`: one uvicorn process with auto-reload on 127.0.0.1:8000, as the app role of
    the database this stack runs on (else DATABASE_URL)."""
    env = stack.service_env() if stack.saved() else dict(os.environ)
    argv = ["uvicorn", "--factory", "service.stack.asgi:create_stack", "--reload"]
    argv += ["--host", "127.0.0.1", "--port", "8000"]
    os.execvpe(argv[0], argv, env)  # noqa: S606 (the developer's own command)


def main() -> None:
    """Parse the command line and run the command; a StackError ends it with its message."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.native", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "logs", "reload", "migrate", "release", "dev"):
        commands.add_parser(name)
    commands.add_parser("scale").add_argument("workers", type=int)
    seeding = commands.add_parser("seed")
    seeding.add_argument("rows", type=int)
    seeding.add_argument("--batch", type=int, default=seed.BATCH, help="rows per statement")
    rotate = commands.add_parser("rotate-logs")
    rotate.add_argument("--watch", action="store_true", help="by size, every second")
    args = parser.parse_args()
    os.umask(0o077)
    stack = Stack.from_environment()
    try:
        if args.command == "scale":
            gunicorn.scale(stack, args.workers)
        elif args.command == "seed":
            seed.run(stack.service_env()["DATABASE_URL"], args.rows, args.batch)
        elif args.command == "rotate-logs":
            rotate_logs(stack, watch=args.watch)
        else:
            commands_by_name = {
                "up": up,
                "down": down,
                "status": status,
                "logs": logs,
                "reload": reload,
                "migrate": migrate,
                "release": release,
                "dev": dev,
            }
            commands_by_name[args.command](stack)
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
