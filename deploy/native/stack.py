"""The stack as local processes: PostgreSQL, migrations, gunicorn, nginx, Prometheus.

    stack.py up            start what is not running, wait for /readyz through nginx
    stack.py down          stop everything it started, gracefully, and free every port
    stack.py status        each component, its pid, and the live worker pids
    stack.py logs          follow every log under $RUN_DIR/logs
    stack.py reload        new code and config, zero failed requests (USR2, wait, TERM old)
    stack.py scale N       N workers, live (TTIN/TTOU), after the connection budget check

gunicorn supervises its workers, nginx and PostgreSQL their own processes; this script
only starts, signals and waits. Environment: RUN_DIR (default .run), HTTP_PORT (8080),
OPS_PORT (8081), DATABASE_URL (default: a private cluster in $RUN_DIR/postgres on
POSTGRES_PORT, 55432), WEB_CONCURRENCY, and every setting the service reads.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
sys.path.insert(0, str(ROOT))

from service.capacity import default_workers  # noqa: E402 (needs ROOT on the path)


def log(message: str) -> None:
    """One progress line for the person at the terminal."""
    print(f"stack: {message}", flush=True)


def fail(message: str) -> NoReturn:
    """Stop with a message that says what went wrong."""
    print(f"stack: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


@dataclass(frozen=True)
class Layout:
    """Where everything of one stack lives, and on which ports."""

    run_dir: Path
    http_port: int
    ops_port: int
    postgres_port: int
    prometheus_port: int
    exporter_port: int

    @classmethod
    def from_env(cls) -> "Layout":
        """The layout the environment asks for."""
        return cls(
            run_dir=Path(os.environ.get("RUN_DIR", ROOT / ".run")).resolve(),
            http_port=int(os.environ.get("HTTP_PORT", "8080")),
            ops_port=int(os.environ.get("OPS_PORT", "8081")),
            postgres_port=int(os.environ.get("POSTGRES_PORT", "55432")),
            prometheus_port=int(os.environ.get("PROMETHEUS_PORT", "9090")),
            exporter_port=int(os.environ.get("NGINX_EXPORTER_PORT", "9113")),
        )

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    @property
    def postgres_dir(self) -> Path:
        return self.run_dir / "postgres"

    @property
    def gunicorn_pidfile(self) -> Path:
        return self.run_dir / "gunicorn.pid"

    @property
    def ready_dir(self) -> Path:
        return self.run_dir / "gunicorn" / "ready"

    @property
    def nginx_dir(self) -> Path:
        return self.run_dir / "nginx"

    @property
    def nginx_conf(self) -> Path:
        return self.nginx_dir / "nginx.conf"

    @property
    def prometheus_dir(self) -> Path:
        return self.run_dir / "prometheus"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"


# --- processes -------------------------------------------------------------------------


def read_pid(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that process is alive."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    """Live child processes of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    """Poll `check` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


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
    layout: Layout, log_name: str, argv: list[str], env: dict[str, str] | None = None
) -> "subprocess.Popen[bytes]":
    """Start a long-running program in its own session, appending to $RUN_DIR/logs/NAME.log."""
    with (layout.logs / f"{log_name}.log").open("ab") as log_file:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# --- state: what `up` decided, for the commands that come after -------------------------


def load_state(layout: Layout) -> dict[str, str]:
    """The environment `up` ran with (database URL, private cluster or not)."""
    try:
        state: dict[str, str] = json.loads(layout.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return state


def service_env(layout: Layout, state: dict[str, str]) -> dict[str, str]:
    """The environment gunicorn, Alembic and the budget check run with."""
    return {**os.environ, "RUN_DIR": str(layout.run_dir), "DATABASE_URL": state["database_url"]}


# --- PostgreSQL ----------------------------------------------------------------------------


def ensure_database(layout: Layout) -> dict[str, str]:
    """Use DATABASE_URL, or start the private cluster; return the state to remember."""
    if os.environ.get("DATABASE_URL"):
        url = os.environ["DATABASE_URL"]
        log("database: DATABASE_URL")
        return {"database_url": url, "private_postgres": ""}
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{layout.postgres_port}/notes"
    subprocess.run([HERE / "install-deps", "postgres"], check=True)
    subprocess.run(
        [HERE / "pg-cluster", "start", layout.postgres_dir, str(layout.postgres_port)], check=True
    )
    create = (
        "import asyncio, asyncpg, sys\n"
        "async def main():\n"
        "    c = await asyncpg.connect(sys.argv[1])\n"
        "    if not await c.fetchval(\"SELECT 1 FROM pg_database WHERE datname = 'notes'\"):\n"
        "        await c.execute('CREATE DATABASE notes')\n"
        "    await c.close()\n"
        "asyncio.run(main())\n"
    )
    admin = f"postgresql://postgres@127.0.0.1:{layout.postgres_port}/postgres"
    subprocess.run([PYTHON, "-c", create, admin], check=True)
    return {"database_url": url, "private_postgres": "1"}


def migrate(env: dict[str, str]) -> None:
    """alembic upgrade head, once (it takes the migration advisory lock itself)."""
    log("migrations: alembic upgrade head")
    result = subprocess.run(
        [PYTHON, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        fail(f"migrations failed:\n{result.stdout}{result.stderr}")


# --- gunicorn ------------------------------------------------------------------------------


def ready_workers(layout: Layout, master: int) -> list[int]:
    """Workers of `master` whose app has started and serves."""
    return [pid for pid in children(master) if (layout.ready_dir / str(pid)).exists()]


def wait_workers(layout: Layout, master: int, count: int, timeout: float = 60) -> None:
    """Wait until `master` has exactly `count` workers, all ready."""

    def settled() -> bool:
        if not alive(master):
            fail(f"gunicorn master {master} exited; see {layout.logs / 'app.log'}")
        return len(children(master)) == count and len(ready_workers(layout, master)) == count

    wait_for(f"{count} ready gunicorn workers", settled, timeout)


def start_gunicorn(layout: Layout, env: dict[str, str]) -> int:
    """Start the gunicorn master in its own session, logging to $RUN_DIR/logs/app.log."""
    # The console script, not `python -m gunicorn`: USR2 re-executes the master's argv, and
    # `python .../gunicorn/__main__.py` would put gunicorn's package dir (with its own `http`
    # module) first on sys.path.
    argv = [str(Path(PYTHON).parent / "gunicorn"), "--config", str(ROOT / "gunicorn.conf.py")]
    process = spawn(layout, "app", argv, env=env)

    def pidfile_written() -> bool:
        if process.poll() is not None:
            tail = (layout.logs / "app.log").read_text(errors="replace").splitlines()[-15:]
            fail("gunicorn exited during start:\n" + "\n".join(tail))
        return read_pid(layout.gunicorn_pidfile) == process.pid

    wait_for("gunicorn's pid file", pidfile_written, 30)
    return process.pid


def budget_check(env: dict[str, str], workers: int) -> None:
    """Refuse a worker count whose pools would not fit the database (service.capacity)."""
    result = subprocess.run(
        [PYTHON, "-m", "service.capacity", "check", "--workers", str(workers)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        fail(result.stderr.strip() or result.stdout.strip())
    log(result.stdout.strip())


# --- nginx ---------------------------------------------------------------------------------


NGINX_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def render_nginx(layout: Layout) -> bool:
    """Fill nginx.conf's placeholders for native mode, check the result with nginx -t, and
    tell whether it differs from the config nginx runs with."""
    values = {
        "NGINX_RUN_DIR": str(layout.nginx_dir),
        "NGINX_ACCESS_LOG": str(layout.logs / "nginx-access.log"),
        "NGINX_ERROR_LOG": str(layout.logs / "nginx-error.log"),
        "LISTEN_ADDRESS": "127.0.0.1",
        "OPS_LISTEN_ADDRESS": "127.0.0.1",
        "HTTP_PORT": str(layout.http_port),
        "OPS_PORT": str(layout.ops_port),
        "APP_UPSTREAM": f"unix:{layout.run_dir / 'gunicorn.sock'}",
    }
    template = (ROOT / "nginx.conf").read_text()
    missing = set(NGINX_PLACEHOLDER.findall(template)) - values.keys()
    if missing:
        fail(f"nginx.conf has placeholders native mode does not fill: {sorted(missing)}")
    layout.nginx_dir.mkdir(parents=True, exist_ok=True)
    rendered = NGINX_PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    changed = not layout.nginx_conf.exists() or layout.nginx_conf.read_text() != rendered
    previous = layout.nginx_conf.read_text() if layout.nginx_conf.exists() else None
    layout.nginx_conf.write_text(rendered)
    result = nginx(layout, "-t", capture=True)
    if result.returncode != 0:
        if previous is not None:
            layout.nginx_conf.write_text(previous)
        fail(f"nginx -t failed, the running config is unchanged:\n{result.stderr}")
    return changed


def nginx(layout: Layout, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the nginx binary against the rendered config."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.run(
        [
            binary,
            "-p",
            str(layout.nginx_dir),
            "-c",
            str(layout.nginx_conf),
            "-e",
            str(layout.logs / "nginx-error.log"),
            *args,
        ],
        capture_output=capture,
        text=True,
        check=False,
    )


def nginx_pid(layout: Layout) -> int | None:
    """The nginx master's pid, if it runs."""
    return read_pid(layout.nginx_dir / "nginx.pid")


# --- Prometheus and the nginx exporter -----------------------------------------------------

PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus"


def start_daemon(layout: Layout, name: str, argv: list[str]) -> int:
    """Start a long-running program that writes no pid file of its own; write one for it."""
    pid = spawn(layout, name, argv).pid
    (layout.run_dir / f"{name}.pid").write_text(str(pid))
    return pid


def start_exporter(layout: Layout) -> None:
    """nginx's stub_status as Prometheus metrics (Debian's prometheus-nginx-exporter)."""
    if read_pid(layout.run_dir / "nginx-exporter.pid"):
        log("nginx exporter: already running")
        return
    binary = shutil.which("prometheus-nginx-exporter") or "/usr/bin/prometheus-nginx-exporter"
    pid = start_daemon(
        layout,
        "nginx-exporter",
        [
            binary,
            f"-nginx.scrape-uri=http://127.0.0.1:{layout.ops_port}/stub_status",
            f"-web.listen-address=127.0.0.1:{layout.exporter_port}",
        ],
    )
    wait_for("the nginx exporter", lambda: port_open(layout.exporter_port), 15)
    log(f"nginx exporter: pid {pid}")


def start_prometheus(layout: Layout) -> None:
    """Prometheus with the repo's config and rules, scraping this stack's ports."""
    if read_pid(layout.run_dir / "prometheus.pid"):
        log("prometheus: already running")
        return
    directory = layout.prometheus_dir
    (directory / "targets").mkdir(parents=True, exist_ok=True)
    # The same config and rules as compose (symlinks), with targets on this stack's ports.
    for name in ("prometheus.yml", "rules"):
        link = directory / name
        link.unlink(missing_ok=True)
        link.symlink_to(PROMETHEUS_CONFIG / name)
    targets = {
        "notes": ([f"127.0.0.1:{layout.ops_port}"], {"service": "notes"}),
        "nginx": ([f"127.0.0.1:{layout.exporter_port}"], {}),
        "prometheus": ([f"127.0.0.1:{layout.prometheus_port}"], {}),
    }
    for job, (addresses, labels) in targets.items():
        group = [{"targets": addresses, "labels": labels}]
        (directory / "targets" / f"{job}.json").write_text(json.dumps(group))
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    pid = start_daemon(
        layout,
        "prometheus",
        [
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{layout.prometheus_port}",
        ],
    )
    wait_for(
        "Prometheus to be ready",
        lambda: http_status(f"{layout.prometheus_url}/-/ready") == 200,
        60,
        interval=0.25,
    )
    log(f"prometheus: pid {pid}")


# --- commands ------------------------------------------------------------------------------


def up(layout: Layout) -> None:
    """Start whatever is not running; return once /readyz answers 200 through nginx."""
    for directory in (layout.logs, layout.nginx_dir, layout.ready_dir):
        directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([HERE / "install-deps", "nginx", "prometheus"], check=True)

    state = load_state(layout) if read_pid(layout.gunicorn_pidfile) else {}
    if not state:
        state = ensure_database(layout)
        layout.state_file.write_text(json.dumps(state))
    elif state.get("private_postgres"):
        subprocess.run(
            [HERE / "pg-cluster", "start", layout.postgres_dir, str(layout.postgres_port)],
            check=True,
        )
    env = service_env(layout, state)
    migrate(env)

    master = read_pid(layout.gunicorn_pidfile)
    if master:
        log(f"gunicorn: already running (master {master}, workers {children(master)})")
    else:
        for port in (layout.http_port, layout.ops_port):
            if port_open(port) and not nginx_pid(layout):
                fail(f"port {port} is taken by another program; set HTTP_PORT/OPS_PORT")
        master = start_gunicorn(layout, env)
        workers = int(env.get("WEB_CONCURRENCY") or 0) or default_workers()
        wait_workers(layout, master, workers)
        log(f"gunicorn: master {master}, {workers} workers {children(master)}")

    if nginx_pid(layout):
        log(f"nginx: already running (pid {nginx_pid(layout)})")
    else:
        render_nginx(layout)
        result = nginx(layout, capture=True)
        if result.returncode != 0:
            fail(f"nginx did not start:\n{result.stderr}")
        wait_for("nginx's pid file", lambda: nginx_pid(layout) is not None, 10)
        log(f"nginx: pid {nginx_pid(layout)}")

    start_exporter(layout)
    start_prometheus(layout)

    wait_for(
        f"{layout.public_url}/readyz to answer 200",
        lambda: http_status(f"{layout.public_url}/readyz") == 200,
        60,
        interval=0.25,
    )
    log("ready")
    print(f"  API         {layout.public_url}/api/v1/notes")
    print(f"  docs        {layout.public_url}/docs")
    print(f"  metrics     {layout.ops_url}/metrics")
    print(f"  nginx       {layout.ops_url}/stub_status")
    print(f"  prometheus  {layout.prometheus_url}")
    print(f"  logs        {layout.logs}/")


def down(layout: Layout) -> None:
    """Stop nginx, gunicorn and the private cluster, gracefully; check every port is free."""
    for name in ("prometheus", "nginx-exporter"):
        pidfile = layout.run_dir / f"{name}.pid"
        pid = read_pid(pidfile)
        if pid:
            stop_process(name, pid, signal.SIGTERM, 30)
            log(f"{name}: stopped")
        pidfile.unlink(missing_ok=True)
    pid = nginx_pid(layout)
    if pid:
        nginx(layout, "-s", "quit", capture=True)
        stop_process("nginx", pid, signal.SIGQUIT, 30)
        log("nginx: stopped")
    for pidfile in (Path(f"{layout.gunicorn_pidfile}.2"), layout.gunicorn_pidfile):
        master = read_pid(pidfile)
        if master:
            workers = children(master)
            stop_process("gunicorn", master, signal.SIGTERM, 45)
            for worker in workers:
                if alive(worker):
                    os.kill(worker, signal.SIGKILL)
            log(f"gunicorn: master {master} stopped")
    state = load_state(layout)
    if state.get("private_postgres") or (layout.postgres_dir / "postmaster.pid").exists():
        subprocess.run([HERE / "pg-cluster", "stop", layout.postgres_dir], check=True)
        log("postgres: stopped")
    layout.state_file.unlink(missing_ok=True)
    ports = (layout.http_port, layout.ops_port, layout.prometheus_port, layout.exporter_port)
    busy = [port for port in ports if port_open(port)]
    if busy:
        fail(f"ports still answering after down: {busy}")
    log("down")


def status(layout: Layout) -> None:
    """Print each component with its pid and the live worker pids; exit 3 if any is down."""
    state = load_state(layout)
    master = read_pid(layout.gunicorn_pidfile)
    pid = nginx_pid(layout)
    private = state.get("private_postgres")
    postgres = "private cluster" if private else ("DATABASE_URL" if state else "unknown")
    print(f"postgres  {postgres}")
    if master:
        workers = children(master)
        ready = ready_workers(layout, master)
        print(f"gunicorn  master {master}, {len(workers)} workers {workers}, ready {ready}")
    else:
        print("gunicorn  stopped")
    print(f"nginx     {'pid ' + str(pid) if pid else 'stopped'}")
    for name in ("nginx-exporter", "prometheus"):
        daemon = read_pid(layout.run_dir / f"{name}.pid")
        print(f"{name:<15} {'pid ' + str(daemon) if daemon else 'stopped'}")
    ready_status = http_status(f"{layout.public_url}/readyz")
    print(f"readyz    {ready_status or 'no answer'} ({layout.public_url}/readyz)")
    if not (master and pid and ready_status == 200):
        sys.exit(3)


def logs(layout: Layout) -> None:
    """Follow every log file of the stack."""
    files = sorted(str(path) for path in layout.logs.glob("*.log"))
    if not files:
        fail(f"no logs in {layout.logs}: is the stack up?")
    os.execvp("tail", ["tail", "-n", "20", "-F", *files])  # noqa: S606 (replaces this process)


def reload(layout: Layout) -> None:
    """New code and config with zero failed requests.

    gunicorn's HUP stops the old workers as soon as new ones are forked, before they can
    serve (benoitc/gunicorn#3394). Instead: USR2 starts a new master with new workers beside
    the old ones on the same socket; once every new worker is ready, TERM makes the old
    master drain and exit. If the new code does not start, the old master keeps serving.
    """
    old = read_pid(layout.gunicorn_pidfile)
    if not old:
        fail("gunicorn is not running: make up first")
    workers = len(children(old))
    # Old and new workers overlap until the old ones drain: both sets of pools must fit.
    budget_check(service_env(layout, load_state(layout)), 2 * workers)
    # nginx's own reload closes idle client keep-alive connections, which races a client's
    # next request on them: reload it only when its config really changed.
    if render_nginx(layout) and nginx_pid(layout):
        nginx(layout, "-s", "reload", capture=True)
        log("nginx: configuration changed and reloaded")
    os.kill(old, signal.SIGUSR2)
    # The new master writes gunicorn.pid.2 and takes gunicorn.pid once the old one is gone.
    new_pidfile = Path(f"{layout.gunicorn_pidfile}.2")
    wait_for("the new gunicorn master", lambda: read_pid(new_pidfile) is not None, 30)
    new = read_pid(new_pidfile)
    if new is None:
        fail("the new gunicorn master exited at once; the old one keeps serving. See app.log")
    deadline = time.monotonic() + 90
    while not (len(children(new)) == workers and len(ready_workers(layout, new)) == workers):
        if not alive(new) or time.monotonic() > deadline:
            if alive(new):
                stop_process("new gunicorn", new, signal.SIGTERM, 45)
            fail(f"new workers did not start; master {old} keeps serving. See app.log")
        time.sleep(0.1)
    log(f"gunicorn: new master {new} with {workers} ready workers; retiring master {old}")
    stop_process("old gunicorn", old, signal.SIGTERM, 45)
    wait_for("the new master to take over", lambda: read_pid(layout.gunicorn_pidfile) == new, 15)
    log("reloaded")


def scale(layout: Layout, target: int) -> None:
    """Change the number of workers live, one TTIN/TTOU at a time."""
    if target < 1:
        fail("WORKERS must be at least 1")
    master = read_pid(layout.gunicorn_pidfile)
    if not master:
        fail("gunicorn is not running: make up first")
    env = service_env(layout, load_state(layout))
    budget_check(env, target)
    # One signal at a time: gunicorn's signal queue holds only five.
    current = len(children(master))
    while current != target:
        step = 1 if target > current else -1
        os.kill(master, signal.SIGTTIN if step > 0 else signal.SIGTTOU)
        current += step

        def reached(count: int = current, pid: int = master) -> bool:
            return len(children(pid)) == count

        wait_for(f"{current} workers", reached, 60)
    wait_workers(layout, master, target)
    log(f"gunicorn: {target} workers {children(master)}")


def main() -> None:
    """Dispatch the command line."""
    commands = {"up": up, "down": down, "status": status, "logs": logs, "reload": reload}
    args = sys.argv[1:]
    layout = Layout.from_env()
    if len(args) == 2 and args[0] == "scale" and args[1].isdigit():
        scale(layout, int(args[1]))
    elif len(args) == 1 and args[0] in commands:
        commands[args[0]](layout)
    else:
        fail(f"usage: stack.py {{{'|'.join(commands)}|scale N}}")


if __name__ == "__main__":
    main()
