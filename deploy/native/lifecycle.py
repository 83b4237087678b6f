"""`up`, `down` and `status` of the native stack: what this host's part of it starts, stops and
reports (STACK_ROLE, deploy.native.roles), in the order each part needs.

`up` starts whatever is not running (the database and its migrations, PgBouncer, gunicorn, nginx,
Prometheus and the exporter, the log rotator) and returns once /readyz answers; `down` stops
them gracefully and checks every port is free; `status` prints each with its pid.
"""

import os
import sys
import time
from collections.abc import Callable
from typing import assert_never

from deploy.native import (
    accounts,
    app_deps,
    firewall,
    gunicorn,
    monitoring,
    nginx,
    pgbouncer,
    postgres,
    rotation,
    tls,
)
from deploy.native.processes import (
    children,
    fail,
    http_status,
    log,
    port_open,
    read_pid,
    run_helper,
)
from deploy.native.roles import Part
from deploy.native.state import Stack, StackState, StateFileError
from service.config import GunicornSettings, WorkerSettings, load, load_settings
from service.runtime.capacity import default_workers


def up(stack: Stack) -> None:
    """Start whatever of this host's part is not running; return once it answers."""
    _refuse_what_this_host_cannot_serve(stack)
    layout = stack.layout
    # Others may pass through the run directory, the logs' and nginx's, to what is theirs in
    # them (the cluster's, PgBouncer's and gunicorn's directories, gunicorn's app.log, nginx's
    # workers' temporary files), and list nothing: every file the runner makes is its own
    # (umask 077, set in `main`).
    for directory, mode in ((layout.root, 0o711), (layout.logs, 0o711), (layout.nginx_dir, 0o711)):
        accounts.own(directory, None, mode)
    if stack.role.runs(Part.PROXY):
        run_helper("install-deps", "nginx", "prometheus")
    if stack.role.runs(Part.DATABASE) or stack.role.runs(Part.APP):
        # The app's migrations and its workers import its code, and so what it needs.
        app_deps.install(load(WorkerSettings).app_path)
    for part in stack.role.parts:
        _start(stack, part)
    rotation.start(stack)
    ready = readiness_url(stack)
    if ready and not eventually(lambda: http_status(ready) == 200):
        fail(f"{ready} did not answer 200 within 60s")
    log("ready")
    for name, url in _urls(stack):
        print(f"  {name:<11} {url}")


def _refuse_what_this_host_cannot_serve(stack: Stack) -> None:
    """Before anything starts: what a partial role needs from the hosts of the other parts."""
    role = stack.role
    if role.runs(Part.APP) and not role.runs(Part.DATABASE):
        if not load_settings().database_url_is_explicit:
            fail("an app host needs DATABASE_URL: the database host's PgBouncer (POOLER=pgbouncer)")
        bind = load(GunicornSettings).gunicorn_bind
        if not bind or bind.startswith("unix:"):
            fail("an app host serves the proxy host: set GUNICORN_BIND=<this host's address>:8000")
    if role.runs(Part.PROXY) and not role.runs(Part.APP) and not stack.settings.app_upstream:
        fail("a proxy host needs its app hosts: set APP_UPSTREAM=<name of every app host>:8000")
    if role.runs(Part.PROXY) and stack.settings.tls == "files":
        tls.checked_files(stack.settings.tls_cert, stack.settings.tls_key)


def _start(stack: Stack, part: Part) -> None:
    """Start one part of the stack on this host, unless it runs."""
    match part:
        case Part.DATABASE:
            _database(stack)
        case Part.APP:
            if not stack.role.runs(Part.DATABASE):
                _remote_database(stack)
            _gunicorn(stack)
            _admit_only_the_proxy(stack)
        case Part.PROXY:
            nginx.start(stack)
            monitoring.start_exporter(stack)
            monitoring.start_prometheus(stack)
        case _:
            assert_never(part)


def _gunicorn(stack: Stack) -> None:
    """gunicorn and its workers, unless they run."""
    running = gunicorn.master(stack)
    if running:
        log(f"gunicorn: already running (master {running})")
        return
    if stack.role.runs(Part.PROXY):
        # nginx starts next on these ports: say so before the workers take their time.
        for port in (stack.settings.http_port, stack.settings.ops_port):
            if port_open(port) and not nginx.pid(stack):
                fail(f"port {port} is taken by another program; set HTTP_PORT/OPS_PORT")
    env = stack.service_env()
    workers = int(env.get("WEB_CONCURRENCY") or 0) or default_workers()
    master = gunicorn.start(stack, env, workers)
    log(f"gunicorn: master {master}, {workers} workers ready")
    gunicorn.check_measured_budget(stack, master, workers)


def _routable_port(settings: GunicornSettings) -> int | None:
    """The port gunicorn listens on at a routable address (GUNICORN_BIND), if it does."""
    bind = settings.gunicorn_bind
    if not bind or bind.startswith("unix:"):
        return None
    host, _, port = bind.rpartition(":")
    return None if host in ("127.0.0.1", "localhost", "[::1]") else int(port)


def _admit_only_the_proxy(stack: Stack) -> None:
    """An app host serving a routable address: only its proxy may connect (deploy.native.
    firewall), when started as root and FORWARDED_ALLOW_IPS names it."""
    settings = load(GunicornSettings)
    port = _routable_port(settings)
    if port is None:
        return
    sources = firewall.allowed_sources(settings.forwarded_allow_ips)
    if os.geteuid() != 0 or not sources:
        log(
            f"warning: gunicorn's port {port} is open to whoever reaches this host: set "
            "FORWARDED_ALLOW_IPS to the proxy's address, and start as root, to admit it alone"
        )
        return
    run_helper("install-deps", "iptables")
    firewall.admit_only(port, sources)


def _remote_database(stack: Stack) -> None:
    """An app host: the database (PgBouncer with POOLER=pgbouncer) is on another host, named
    by DATABASE_URL, as the app role."""
    # The URL is PgBouncer's own when it is on the database host: the workers use it as is.
    saved = stack.kept(load_settings().sqlalchemy_url)
    stack.save(StackState(database_url=saved, pooler=stack.settings.pooler, pooled_url=saved))


def readiness_url(stack: Stack) -> str | None:
    """What answers 200 once this host's part serves: /readyz through nginx, or gunicorn's
    own on an app host; None on the database host (its start waits for PgBouncer)."""
    front = stack.role.front
    match front:
        case Part.PROXY:
            return f"{stack.public_url}/readyz"
        case Part.APP:
            host, _, port = str(load(GunicornSettings).gunicorn_bind).rpartition(":")
            return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/readyz"  # noqa: S104
        case Part.DATABASE:
            return None
        case _:
            assert_never(front)


def _urls(stack: Stack) -> list[tuple[str, str]]:
    """What this host serves, for the person at the terminal."""
    front = stack.role.front
    urls: list[tuple[str, str]]
    match front:
        case Part.PROXY:
            app = load(WorkerSettings).app
            notes = app == WorkerSettings.model_fields["app"].default
            urls = [
                ("API", f"{stack.public_url}/api/v1/notes" if notes else f"{stack.public_url}/"),
                ("app", app) if not notes else ("docs", f"{stack.public_url}/docs"),
                ("metrics", f"{stack.ops_url}/metrics"),
                ("nginx", f"{stack.ops_url}/stub_status"),
                ("prometheus", stack.prometheus_url),
            ]
            settings = stack.settings
            if settings.tls != "off":
                https = f"https://{settings.listen_address}:{settings.https_port}"
                urls.insert(1, ("https", f"{https}/"))
            if settings.tls == "self-signed":
                urls.insert(2, ("tls ca", str(stack.layout.tls_dir / "ca.pem")))
        case Part.APP:
            urls = [("readyz", str(readiness_url(stack)))]
        case Part.DATABASE:
            state = stack.saved()
            settings = stack.settings
            pgbouncer_address = f"{settings.listen_address}:{settings.pgbouncer_port}"
            urls = [("pgbouncer", pgbouncer_address)] if _pooled(state) else []
        case _:
            assert_never(front)
    return [*urls, ("logs", f"{stack.layout.logs}/")]


def _pooled(state: StackState | None) -> bool:
    return state is not None and state.pooler == "pgbouncer"


def _database(stack: Stack) -> None:
    """The database (DATABASE_URL, or the private cluster started), migrated, and PgBouncer in
    front of it with POOLER=pgbouncer. While a process started with the saved database runs,
    `up` keeps it."""
    pooler = stack.settings.pooler
    in_use = gunicorn.master(stack) or read_pid(stack.layout.pidfile(pgbouncer.NAME))
    state = stack.saved() if in_use else None
    if state is None:
        state = postgres.ensure_database(stack)
        if pooler == "pgbouncer":
            state = state.through(pooler, pgbouncer.pooled_url(stack, state.direct_workers_url))
        stack.save(state)
    else:
        if "pooler" in stack.settings.model_fields_set and pooler != state.pooler:
            fail(
                f"the stack runs with POOLER={state.pooler}: make down, then make up "
                f"POOLER={pooler}"
            )
        if state.private_postgres:
            postgres.start_private(stack)
    postgres.migrate(stack.migration_env())
    if _pooled(state):
        run_helper("install-deps", "pgbouncer")
        pgbouncer.start(stack, state.direct_workers_url)


def eventually(check: Callable[[], bool], seconds: float = 60) -> bool:
    """Whether `check` holds within `seconds`, asked every quarter of a second."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def down(stack: Stack) -> None:
    """Stop Prometheus, nginx, gunicorn and the private cluster; check every port is free."""
    try:
        state = stack.saved()
    except StateFileError as exc:
        # Stop everything all the same: down is the way out of a state file gone bad.
        log(f"{exc}; stopping whatever runs")
        state = None
    rotation.stop(stack)
    monitoring.stop(stack)
    nginx.stop(stack)
    gunicorn.stop(stack)
    port = _routable_port(load(GunicornSettings))
    if port is not None and os.geteuid() == 0:
        firewall.remove(port)
    pgbouncer.stop(stack)
    private = state is not None and state.private_postgres
    if private or (stack.layout.postgres_dir / "postmaster.pid").exists():
        postgres.stop_private(stack)
        log("postgres: stopped")
    stack.layout.state_file.unlink(missing_ok=True)
    settings = stack.settings
    local, listen = "127.0.0.1", settings.listen_address
    ports = [
        (listen, settings.http_port),
        (local, settings.ops_port),
        (local, settings.prometheus_port),
        (local, settings.nginx_exporter_port),
    ]
    if _pooled(state) and stack.role.runs(Part.DATABASE):
        ports.append((listen, settings.pgbouncer_port))
    busy = [f"{host}:{port}" for host, port in ports if port_open(port, host)]
    if busy:
        fail(f"ports still answering after down: {busy}")
    log("down")


def status(stack: Stack) -> None:
    """Print each component with its pid and the live worker pids; exit 3 if one of this
    host's part is down."""
    state = stack.saved()
    role = stack.role
    if not role.whole:
        print(f"role      {role.name}")
    private = state is not None and state.private_postgres
    print(f"postgres  {'private cluster' if private else ('DATABASE_URL' if state else 'unknown')}")
    bouncer = read_pid(stack.layout.pidfile(pgbouncer.NAME))
    if _pooled(state):
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
    readyz = readiness_url(stack)
    ready_status = http_status(readyz) if readyz else None
    if readyz:
        print(f"readyz    {ready_status or 'no answer'} ({readyz})")

    def running(part: Part) -> bool:
        match part:
            case Part.DATABASE:
                return state is not None and (not _pooled(state) or bool(bouncer))
            case Part.APP:
                return bool(master)
            case Part.PROXY:
                return bool(nginx_pid)
            case _:
                assert_never(part)

    # Every part of this host runs, and its front answers (the database host's has no URL).
    if not all(map(running, role.parts)) or (readyz and ready_status != 200):
        sys.exit(3)
