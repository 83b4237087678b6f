"""PgBouncer in transaction mode between the workers and PostgreSQL (`make up POOLER=pgbouncer`).

The workers connect to PgBouncer on LISTEN_ADDRESS:PGBOUNCER_PORT (127.0.0.1, unless app hosts
elsewhere use it) as the app role, with its password. PgBouncer's auth file holds the role's
SCRAM verifier, the one the server stores (the stack set it: deploy.native.secrets), so it
checks their logins and logs into the server with the keys their SCRAM exchange proved, and
holds no password at all; only for a role an operator named with its password
(APP_DATABASE_URL) does the file, of mode 0600, hold that password. PgBouncer keeps at most
PGBOUNCER_POOL_SIZE connections to PostgreSQL, however many workers and hosts ask. Migrations
bypass it: their advisory lock belongs to a session, which a transaction pooler hands to someone
else after each transaction.

Debian 12's PgBouncer (1.18) does not track prepared statements, so the app, told
DB_POOLER=pgbouncer, prepares none by name (service.database.connections).
"""

import ipaddress
import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from deploy.native.layout import RunLayout
from deploy.native.processes import (
    fail,
    log,
    port_open,
    read_pid,
    spawn,
    stop_process,
    wait_started,
)
from deploy.native.secrets import write_private
from deploy.native.settings import StackSettings
from deploy.native.state import Stack
from service.config import BudgetSettings, load

NAME = "pgbouncer"
# As root, PgBouncer (which refuses to run as root) drops to this user.
RUN_AS = "nobody"


def pooled_url(stack: Stack, database_url: str) -> str:
    """The URL the workers use: PgBouncer's address, the same user and database (and the same
    password, kept in the secrets)."""
    url = make_url(database_url)
    pooled = url.set(host=stack.settings.listen_address, port=stack.settings.pgbouncer_port)
    return pooled.render_as_string(hide_password=False)


def config(stack: Stack, database: URL, settings: BudgetSettings) -> tuple[str, str]:
    """pgbouncer.ini and its auth file (userlist.txt) for `database` (no password in it)."""
    here = stack.layout.pgbouncer_dir
    name = database.database or "postgres"
    user = database.username or "postgres"
    server = f"host={database.host or '127.0.0.1'} port={database.port or 5432} dbname={name}"
    secret = stack.secrets.verifier(user) or stack.secrets.password(user)
    if secret:
        auth = "scram-sha-256"
        userlist = f'"{user}" "{secret}"\n'
    else:
        # No password: the server trusts this host, and PgBouncer does the same for whoever
        # reaches LISTEN_ADDRESS; `start` refuses that on anything but 127.0.0.1.
        auth = "trust"
        userlist = f'"{user}" ""\n'
    timeout_ms = int(settings.db_statement_timeout * 1000)
    ini = f"""\
; Written by `make up POOLER=pgbouncer` (deploy/native/pgbouncer.py); rewritten on each start.
[databases]
; The workers' statement_timeout and jit are startup parameters PgBouncer cannot carry across
; transactions: every server connection sets them once instead.
{name} = {server} connect_query='SET statement_timeout = {timeout_ms}; SET jit = off'

[pgbouncer]
listen_addr = {stack.settings.listen_address}
listen_port = {stack.settings.pgbouncer_port}
unix_socket_dir =
auth_type = {auth}
auth_file = {here / "userlist.txt"}
pool_mode = transaction
ignore_startup_parameters = statement_timeout,jit
max_client_conn = {settings.pgbouncer_max_client_conn}
default_pool_size = {settings.pgbouncer_pool_size}
reserve_pool_size = 0
; Clients wait for a server connection at most this long (the app's pool timeout is its own).
query_wait_timeout = {max(1, round(settings.db_pool_timeout))}
server_idle_timeout = 600
server_reset_query =
log_connections = 0
log_disconnections = 0
"""
    return ini, userlist


def start(stack: Stack, database_url: str) -> None:
    """Start PgBouncer in front of `database_url` unless it runs; wait until it accepts."""
    pidfile = stack.layout.pidfile(NAME)
    if read_pid(pidfile):
        log("pgbouncer: already running")
        return
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    host, port = stack.settings.listen_address, stack.settings.pgbouncer_port
    database = make_url(database_url)
    if not stack.secrets.password(database.username or "") and not _loopback(host):
        fail(
            f"PgBouncer on {host} would let in whoever reaches that address without a "
            "password: give the workers' role one (APP_DATABASE_URL, or a DATABASE_URL role "
            "that may create the app role)"
        )
    if port_open(port, host):
        fail(f"port {port} is taken by another program; set PGBOUNCER_PORT")
    here = stack.layout.pgbouncer_dir
    here.mkdir(parents=True, exist_ok=True)
    ini, userlist = config(stack, database, load(BudgetSettings))
    write_private(here / "pgbouncer.ini", ini)
    auth_file = here / "userlist.txt"
    write_private(auth_file, userlist)
    argv = [binary, str(here / "pgbouncer.ini")]
    if os.geteuid() == 0:
        account = pwd.getpwnam(RUN_AS)
        for path in (here, here / "pgbouncer.ini", auth_file):
            os.chown(path, account.pw_uid, account.pw_gid)
        argv[1:1] = ["-u", RUN_AS]
    log_file = stack.layout.daemon_log(NAME)
    process = spawn(log_file, argv)
    pidfile.write_text(str(process.pid))
    wait_started(
        "PgBouncer",
        process,
        lambda: port_open(port, host),
        15,
        doing=f"listening on {host}:{port}",
        log_file=log_file,
        pidfile=pidfile,
    )
    log(f"pgbouncer: pid {process.pid}, {host}:{port}")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return host == "localhost"


def stop(stack: Stack) -> None:
    """Stop PgBouncer if it runs (SIGINT: safe shutdown, after the clients' transactions)."""
    pidfile = stack.layout.pidfile(NAME)
    pid = read_pid(pidfile)
    if pid:
        stop_process(NAME, pid, signal.SIGINT, 30)
        log("pgbouncer: stopped")
    pidfile.unlink(missing_ok=True)


@contextmanager
def standalone(database_url: str, port: int) -> Iterator[str]:
    """PgBouncer as `start` runs it, in front of `database_url` on 127.0.0.1:`port`, in a run
    dir of its own (for the benchmark and the tests); the URL that reaches the database
    through it."""
    run_dir = Path(tempfile.mkdtemp(prefix="notes-pgbouncer-"))
    run_dir.chmod(0o755)  # it runs as an unprivileged user when started as root
    stack = Stack(RunLayout(run_dir), StackSettings(run_dir=run_dir, pgbouncer_port=port))
    stack.layout.logs.mkdir()
    saved = stack.kept(database_url)
    start(stack, saved)
    try:
        yield stack.url(pooled_url(stack, saved))
    finally:
        stop(stack)
        shutil.rmtree(run_dir, ignore_errors=True)
