"""Several hosts on one machine: network namespaces on a bridge, each running its part of the
stack with `python -m deploy.native up` and STACK_ROLE, as an operator would on each host.

    db     10.213.0.10  PostgreSQL on its own 127.0.0.1 (the operator's); role `database`:
                        the migrations, and PgBouncer on 10.213.0.10:6432
    app-1  10.213.0.11  role `app`: a gunicorn master and its workers on :8000
    app-2  10.213.0.12  the same
    proxy  10.213.0.40  role `proxy`: nginx (public :8080) with `notes-app:8000` as its
                        upstream, a name that resolves to both app hosts there; Prometheus
                        scraping each app host

The test process stays in the machine's own namespace, on the bridge (10.213.0.1), like a
client of the proxy. Everything is made by `topology()` and removed after, processes included.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy.engine import make_url

from deploy.native.layout import RunLayout
from deploy.native.processes import read_pid

ROOT = Path(__file__).resolve().parent.parent
PG_CLUSTER = ROOT / "deploy" / "native" / "pg-cluster"
SUBNET = "10.213.0"
BRIDGE = "notes-mh0"
PREFIX = "notes-mh-"
APP_NAME = "notes-app"  # what the proxy's nginx resolves to every app host
APP_PORT = 8000
HTTP_PORT = 8080
PGBOUNCER_PORT = 6432
PROMETHEUS_PORT = 9090
# Small on purpose: the hosts' pools together (2 hosts x 2 workers x pool) ask for more.
SERVER_POOL = 6
WORKERS_PER_HOST = 2
# The operator's PostgreSQL trusts 127.0.0.1 on the db host; the superuser's password is what
# the operator gives the database host's DATABASE_URL.
PASSWORD = "multihost-secret"  # noqa: S105 (a throwaway test cluster's)


@dataclass(frozen=True)
class Host:
    """One machine: a network namespace with an address on the bridge, and a run directory."""

    name: str
    address: str
    run_dir: Path

    @property
    def layout(self) -> RunLayout:
        """Where the runner keeps this host's files."""
        return RunLayout(self.run_dir)

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.name}"

    def argv(self, *argv: str) -> list[str]:
        """`argv`, run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self, *argv: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host; with `check`, AssertionError with its output if it
        fails."""
        result = subprocess.run(
            self.argv(*argv), env=env, cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0 or not check, (
            f"{self.name}: {argv}\n{result.stdout}{result.stderr}"
        )
        return result

    def stack(
        self, command: str, env: dict[str, str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command of the native runner (`up`, `status`, `reload`, `down`) here."""
        return self.run(sys.executable, "-m", "deploy.native", command, env=env, check=check)

    def fetch(self, url: str) -> str:
        """GET `url` from inside the host (for what listens on its own 127.0.0.1)."""
        code = (
            "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"
        )
        return self.run(sys.executable, "-c", code, url).stdout


@dataclass(frozen=True)
class Topology:
    """The hosts, and how to reach and control what runs on them."""

    db: Host
    apps: tuple[Host, ...]
    proxy: Host
    # What every host is told about the app (APP, APP_PATH, MIGRATIONS, STACK_NAME, its own
    # settings), and the database it is served from.
    app_env: dict[str, str]
    database: str

    @property
    def url(self) -> str:
        """The proxy's public server: where clients send their requests."""
        return f"http://{self.proxy.address}:{HTTP_PORT}"

    @property
    def postgres_dir(self) -> Path:
        """The operator's own PostgreSQL on the database host (outside the stack's run dir)."""
        return self.db.run_dir.parent / "postgresql"

    @property
    def direct_url(self) -> str:
        """The database straight to PostgreSQL, as the db host reaches it."""
        return f"postgresql+asyncpg://postgres:{PASSWORD}@127.0.0.1:5432/{self.database}"

    @property
    def pooled_url(self) -> str:
        """The same database through PgBouncer on the db host, as the app role the database
        host's `up` made, with the password it generated: what the operator gives the app
        hosts."""
        role = f"{self.database}_app"
        password = RunLayout(self.db.run_dir).secrets_dir.joinpath(f"{role}.password")
        pooled = make_url(self.direct_url).set(
            host=self.db.address,
            port=PGBOUNCER_PORT,
            username=role,
            password=password.read_text().strip(),
        )
        return pooled.render_as_string(hide_password=False)

    def env(self, host: Host, extra: dict[str, str] | None = None) -> dict[str, str]:
        """What the operator sets on `host` (and `extra`)."""
        return {**self._env(host), **(extra or {})}

    def _env(self, host: Host) -> dict[str, str]:
        common = {
            **os.environ,
            **self.app_env,
            "RUN_DIR": str(host.run_dir),
            "POOLER": "pgbouncer",
        }
        if host == self.db:
            return {
                **common,
                "STACK_ROLE": "database",
                "DATABASE_URL": self.direct_url,
                "LISTEN_ADDRESS": host.address,
                "PGBOUNCER_PORT": str(PGBOUNCER_PORT),
                "PGBOUNCER_POOL_SIZE": str(SERVER_POOL),
            }
        if host == self.proxy:
            return {
                **common,
                "STACK_ROLE": "proxy",
                "LISTEN_ADDRESS": host.address,
                "APP_UPSTREAM": f"{APP_NAME}:{APP_PORT}",
                "METRICS_TARGETS": " ".join(f"{app.address}:{APP_PORT}" for app in self.apps),
                "HTTP_PORT": str(HTTP_PORT),
                "PROMETHEUS_PORT": str(PROMETHEUS_PORT),
                # As every stack of the suite: what the tests wait for in it comes in seconds.
                "PROMETHEUS_SCRAPE_INTERVAL": "1",
                # The load comes from the machine itself, the bridge's address: exempt from the
                # limits per client, as loopback is on one host.
                "RATE_LIMIT_EXEMPT": f"127.0.0.0/8 ::1 {SUBNET}.1/32",
            }
        return {
            **common,
            "STACK_ROLE": "app",
            "GUNICORN_BIND": f"{host.address}:{APP_PORT}",
            "FORWARDED_ALLOW_IPS": self.proxy.address,
            "WEB_CONCURRENCY": str(WORKERS_PER_HOST),
            "DATABASE_URL": self.pooled_url,
            "APP_HOSTS": str(len(self.apps)),
            "PGBOUNCER_POOL_SIZE": str(SERVER_POOL),
        }

    def up(self, host: Host) -> None:
        """`make up` on `host` (again, after a kill): returns once its part answers."""
        host.stack("up", self.env(host))

    def reload(self, host: Host, extra: dict[str, str] | None = None) -> None:
        """`make reload` on `host`, with `extra` settings."""
        host.stack("reload", self.env(host, extra))

    def status(self, host: Host) -> subprocess.CompletedProcess[str]:
        """`make status` on `host` (exit 3 when its part is down)."""
        return host.stack("status", self.env(host), check=False)

    def master(self, host: Host) -> int | None:
        """The pid of an app host's serving gunicorn master."""
        return read_pid(host.layout.gunicorn_pidfile)

    def kill(self, host: Host) -> list[int]:
        """SIGKILL a whole app host: its master and every worker, at once; the pids killed."""
        master = self.master(host)
        assert master is not None, f"{host.name} runs no gunicorn"
        pids = [master, *(child.pid for child in psutil.Process(master).children())]
        os.killpg(master, signal.SIGKILL)  # the runner starts it in a session of its own
        psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], 10)
        return pids

    def prometheus(self, path: str) -> str:
        """GET a Prometheus API path (it listens on the proxy's own 127.0.0.1)."""
        return self.proxy.fetch(f"http://127.0.0.1:{PROMETHEUS_PORT}{path}")


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], check=check, capture_output=True, text=True)


def _kill_processes_in(netns: str) -> None:
    for pid in _ip("netns", "pids", netns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


# Traffic between two ports of the test bridge, let through the host's FORWARD chain. Docker's
# engine, once it has run, leaves the chain's policy at DROP and makes bridged frames pass it
# (br_netfilter, bridge-nf-call-iptables=1): without this rule no host reaches another.
FORWARD_RULE = ("FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")


def _iptables(action: str, check: bool = True) -> bool:
    """Insert (-I) or delete (-D) FORWARD_RULE, where iptables exists; whether it did."""
    if shutil.which("iptables") is None:
        return False
    result = subprocess.run(
        ["iptables", action, *FORWARD_RULE], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        msg = f"iptables {action} {' '.join(FORWARD_RULE)}: {result.stderr}"
        raise AssertionError(msg)
    return result.returncode == 0


def remove_network() -> None:
    """Remove every namespace of this module (after killing what runs in it), the bridge and
    its FORWARD rule."""
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            _kill_processes_in(name)
            _ip("netns", "delete", name, check=False)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
    _ip("link", "delete", BRIDGE, check=False)
    while _iptables("-D", check=False):
        pass


def _make_network(hosts: list[Host]) -> None:
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    _iptables("-I")
    for host in hosts:
        outside = f"nmh-{host.name}"
        _ip("netns", "add", host.netns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", outside, "master", BRIDGE, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")


def network_available() -> str | None:
    """Why this machine cannot make the topology, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"{PREFIX}probe"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"`ip netns add` is not allowed here: {result.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


@contextlib.contextmanager
def topology(app_env: dict[str, str], database: str) -> Iterator[Topology]:
    """The four hosts, each running its part of a stack serving the app `app_env` names from
    `database`; everything stopped and removed after."""
    remove_network()  # what a killed test run left behind
    root = Path(tempfile.mkdtemp(prefix="notes-multihost-"))
    root.chmod(0o755)  # PostgreSQL and PgBouncer run as unprivileged users
    apps = tuple(Host(f"app-{n}", f"{SUBNET}.1{n}", root / f"app-{n}") for n in (1, 2))
    net = Topology(
        db=Host("db", f"{SUBNET}.10", root / "db"),
        apps=apps,
        proxy=Host("proxy", f"{SUBNET}.40", root / "proxy"),
        app_env=app_env,
        database=database,
    )
    hosts = [net.db, *apps, net.proxy]
    try:
        _make_network(hosts)
        # The proxy resolves one name to every app host (`ip netns exec` mounts this file over
        # /etc/hosts), as Compose's DNS does for a scaled service.
        etc = Path("/etc/netns") / net.proxy.netns
        etc.mkdir(parents=True, exist_ok=True)
        names = "".join(f"{app.address} {APP_NAME}\n" for app in apps)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{names}")
        for host in hosts:
            host.run_dir.mkdir()
            host.run_dir.chmod(0o755)
        # The operator's PostgreSQL, on the database host's own 127.0.0.1.
        net.db.run(
            str(PG_CLUSTER), "start", str(net.postgres_dir), "5432", "--unsafe-no-fsync", "--trust"
        )
        bindir = subprocess.run(
            [PG_CLUSTER, "bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        createdb = f"{bindir}/createdb"
        net.db.run(createdb, "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", database)
        for host in hosts:
            net.up(host)
        yield net
    finally:
        _stop(net)
        remove_network()
        shutil.rmtree(root, ignore_errors=True)


def _stop(net: Topology) -> None:
    """`make down` on every host, then the database; what is left dies with its namespace."""
    for host in (net.proxy, *net.apps, net.db):
        with contextlib.suppress(AssertionError):
            host.stack("down", net.env(host))
    with contextlib.suppress(AssertionError):
        net.db.run(str(PG_CLUSTER), "stop", str(net.postgres_dir))
