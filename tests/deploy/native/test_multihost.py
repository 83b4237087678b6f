"""Past one machine, for real: a database host (PostgreSQL, PgBouncer), two app hosts (each a
gunicorn master and its workers) and a proxy host (nginx, Prometheus), each in a network
namespace of its own (tests/multihost.py). Every request goes through the proxy's address.

What is tested is the stack, so the hosts serve an app it did not write: `examples/inventory`,
named by APP, APP_PATH, MIGRATIONS and STACK_NAME on every host, as its operator would."""

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy.engine import URL, make_url

from deploy.grafana.dashboard import ALL_REQUESTS, REQUESTS_BY_HOST
from deploy.native import app_deps
from deploy.native.layout import RunLayout
from deploy.native.processes import alive, read_pid
from deploy.prometheus.client import answer_data, instant_path, series
from tests.deploy.grafana.test_dashboard import PER_WORKER_PANELS, queries, substitute
from tests.examples.inventory import (
    INVENTORY_ENV,
    ITEM,
    ITEMS,
    POOL_PER_WORKER,
    ItemsLoad,
    an_item,
    reads_only,
)
from tests.metrics import parse, value
from tests.multihost import (
    APP_PORT,
    SERVER_POOL,
    WORKERS_PER_HOST,
    Topology,
    network_available,
    topology,
)
from tests.postgres import ROOT, admin_execute, backends, fresh_database, run_sync
from tests.stack import background_load, nginx_access_lines

READ_ROUTE = ITEM
DATABASE = "inventory"


@pytest.fixture(scope="module")
def multihost_stack() -> Iterator[Topology]:
    """The four hosts, up; removed after the module's tests."""
    deps = ROOT / "deploy" / "native" / "install-deps"
    subprocess.run([deps, "netns", "postgres", "pgbouncer", "nginx", "prometheus"], check=True)
    reason = network_available()
    if reason:
        pytest.skip(reason)
    # What an operator installs on each host beforehand: the app's own requirements (the
    # hosts' namespaces have no route to a package index).
    app_deps.install(Path(INVENTORY_ENV["APP_PATH"]))
    with topology(INVENTORY_ENV, DATABASE) as net:
        yield net


def reads_served(net: Topology) -> dict[str, float]:
    """GETs of one item each app host has answered, from its own /metrics (all its workers)."""
    served = {}
    for app in net.apps:
        # From the proxy host: the app hosts admit no one else (deploy/native/firewall.py).
        text = net.proxy.fetch(f"http://{app.address}:{APP_PORT}/metrics")
        served[app.address] = value(
            parse(text), "http_requests_total", method="GET", route=READ_ROUTE
        )
    return served


async def read_many(net: Topology, item_id: int, total: int) -> tuple[Counter[int | str], set[str]]:
    """`total` GETs of one item through the proxy, 20 at a time: each outcome, and the ids."""
    outcomes: Counter[int | str] = Counter()
    request_ids: set[str] = set()
    queue = iter(range(total))
    async with httpx.AsyncClient(base_url=net.url, timeout=30) as client:

        async def reader() -> None:
            for _ in queue:
                request_id = uuid.uuid4().hex
                request_ids.add(request_id)
                try:
                    response = await client.get(
                        f"{ITEMS}{item_id}", headers={"X-Request-ID": request_id}
                    )
                    outcomes[response.status_code] += 1
                except httpx.HTTPError as exc:
                    outcomes[type(exc).__name__] += 1

        await asyncio.gather(*(reader() for _ in range(20)))
    return outcomes, request_ids


def nginx_workers(net: Topology) -> set[int]:
    """The proxy's nginx worker pids: a reload of nginx would replace them."""
    master = read_pid(net.proxy.layout.nginx_pidfile)
    assert master is not None
    return {child.pid for child in psutil.Process(master).children()}


def prometheus_vector(net: Topology, expr: str, at: float) -> dict[str, float]:
    """An instant query's result by `instance` (or "" when the series has none), asked from
    inside the proxy host, where Prometheus listens."""
    data = answer_data(json.loads(net.prometheus(instant_path(expr, at))))
    return {sample.labels.get("instance", ""): sample.value for sample in series(data)}


async def scraped(net: Topology, served: dict[str, float]) -> None:
    """Wait until Prometheus has scraped each host's `served` count of reads."""
    expr = f'sum by (instance) (http_requests_total{{method="GET", route="{READ_ROUTE}"}})'
    wanted = {f"{host}:{APP_PORT}": count for host, count in served.items()}
    deadline = time.monotonic() + 30
    while (seen := prometheus_vector(net, expr, time.time())) != wanted:
        assert time.monotonic() < deadline, (seen, wanted)
        await asyncio.sleep(1)


async def test_load_spreads_over_both_hosts_and_their_counts_add_up(
    multihost_stack: Topology,
) -> None:
    net = multihost_stack
    item_id = await an_item(net.url)
    await read_many(net, item_id, 40)
    # Prometheus has the hosts' series before the load, so its rates see all of the load.
    await scraped(net, reads_served(net))
    before = reads_served(net)
    outcomes, request_ids = await read_many(net, item_id, 300)
    after = reads_served(net)

    assert outcomes == {200: 300}
    served = {host: after[host] - before[host] for host in after}
    assert sum(served.values()) == 300, served
    assert all(count >= 300 * 0.3 for count in served.values()), served
    # The proxy's access log names the host of each request, and agrees with the hosts.
    lines = await nginx_access_lines(net.proxy.layout.nginx_access_log, request_ids)
    upstreams = Counter(line["upstream"] for line in lines)
    assert upstreams == {f"{host}:{APP_PORT}": count for host, count in served.items()}

    # Prometheus scrapes each host: the dashboard's by-host lines add up to its total.
    await scraped(net, after)
    at = time.time()
    hosts = {f"{app.address}:{APP_PORT}" for app in net.apps}
    by_host = prometheus_vector(net, REQUESTS_BY_HOST.replace("$__rate_interval", "1m"), at)
    total = prometheus_vector(net, ALL_REQUESTS.replace("$__rate_interval", "1m"), at)
    assert set(by_host) == hosts
    # The proxy's Prometheus names the app's job after STACK_NAME.
    up = prometheus_vector(net, f'up{{job="{INVENTORY_ENV["STACK_NAME"]}"}}', at)
    assert up == dict.fromkeys(hosts, 1.0), up
    assert all(rate > 0 for rate in by_host.values()), by_host
    assert sum(by_host.values()) == pytest.approx(total[""]), (by_host, total)


async def test_the_dashboards_worker_panels_draw_each_hosts_workers(
    multihost_stack: Topology,
) -> None:
    """Every per-worker query of the dashboard, against the Prometheus that scrapes both
    hosts: each host's workers are there, told apart by host (pids may repeat across them)."""
    net = multihost_stack
    wanted = [
        (title, ref_id, substitute(expr))
        for title, ref_id, expr in queries()
        if title in PER_WORKER_PANELS
    ]
    assert len(wanted) >= len(PER_WORKER_PANELS)
    hosts = {f"{app.address}:{APP_PORT}" for app in net.apps}
    deadline = time.monotonic() + 60
    while True:
        result = await ItemsLoad(net.url, concurrency=10).run(total=200)
        assert not result.unexpected(), result.counts()
        short = {}
        for title, ref_id, expr in wanted:
            seen = set(prometheus_vector(net, expr, time.time()))
            if seen != hosts:
                short[f"{title} [{ref_id}]"] = seen
        if not short or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    assert not short, short


async def test_a_whole_app_host_killed_under_load_loses_nothing_and_comes_back(
    multihost_stack: Topology,
) -> None:
    """The reads the dead host took are retried by nginx on the other (a POST never is: the
    stack cannot know whether the app acted on it). The host started again takes traffic
    without the proxy being reloaded."""
    net = multihost_stack
    victim, survivor = net.apps
    proxy_workers = nginx_workers(net)
    async with background_load(net.url, concurrency=20, make=reads_only) as load:
        killed = net.kill(victim)
        await asyncio.sleep(2)  # load on the survivor alone
    assert len(killed) == 1 + WORKERS_PER_HOST
    assert not any(alive(pid) for pid in killed)
    down = net.status(victim)
    assert down.returncode == 3, down.stdout + down.stderr
    assert "gunicorn  stopped" in down.stdout

    errors = net.proxy.layout.nginx_error_log.read_text()[-3000:]
    counts = load.result.counts()
    assert set(counts) == {("GET", 200)}, (counts, errors)

    # Back: a fresh master on the same address, and nginx sends it requests again by itself.
    net.up(victim)
    back = net.status(victim)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "role      app" in back.stdout
    item_id = await an_item(net.url)
    before = reads_served(net)
    outcomes, _ = await read_many(net, item_id, 200)
    after = reads_served(net)
    assert outcomes == {200: 200}
    assert after[victim.address] - before[victim.address] >= 200 * 0.3, (before, after)
    assert after[survivor.address] - before[survivor.address] >= 200 * 0.3, (before, after)
    assert nginx_workers(net) == proxy_workers  # not reloaded


async def test_a_rolling_reload_host_by_host_drops_nothing(multihost_stack: Topology) -> None:
    net = multihost_stack
    masters = {app.address: net.master(app) for app in net.apps}
    async with background_load(net.url, concurrency=20, make=ItemsLoad) as load:
        for app in net.apps:
            await asyncio.to_thread(net.reload, app)
    counts = load.result.counts()
    assert set(counts) == {("POST", 201), ("GET", 200)}, counts
    for app in net.apps:
        assert net.master(app) not in {None, masters[app.address]}
        assert len(psutil.Process(net.master(app)).children()) == WORKERS_PER_HOST


async def test_postgres_sees_at_most_pgbouncers_server_pool(multihost_stack: Topology) -> None:
    """The app hosts' pools together ask for more connections than the server pool holds;
    PostgreSQL never sees more than the pool, however hard the hosts are driven."""
    net = multihost_stack
    asked = len(net.apps) * WORKERS_PER_HOST * POOL_PER_WORKER
    assert asked > SERVER_POOL
    pooled = make_url(net.pooled_url)
    samples = []
    async with background_load(net.url, concurrency=40, make=ItemsLoad) as load:
        for _ in range(30):
            samples.append(await backends(pooled, DATABASE))
            await asyncio.sleep(0.1)
    assert not load.result.unexpected(), load.result.counts()
    assert max(samples) <= SERVER_POOL, samples
    assert max(samples) >= 2, samples  # the load did reach the database through the pool


def test_the_app_hosts_admit_only_the_proxy(multihost_stack: Topology) -> None:
    """Whoever else reaches an app host's address is reset: nothing skips nginx (its limits,
    body size, TLS) to the app or its /metrics. The proxy's nginx and Prometheus get in."""
    net = multihost_stack
    for app in net.apps:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{app.address}:{APP_PORT}/healthz", timeout=5)
        assert json.loads(net.proxy.fetch(f"http://{app.address}:{APP_PORT}/healthz")) == {
            "status": "ok"
        }
    assert httpx.get(f"{net.url}/readyz", timeout=30).status_code == 200


def nginx_worker_titles(net: Topology) -> dict[int, str]:
    """The proxy's live nginx workers and their titles."""
    titles = {}
    for pid in nginx_workers(net):
        try:
            titles[pid] = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:  # exited meanwhile
            continue
    return titles


def reload_proxy(net: Topology, extra: dict[str, str] | None = None) -> None:
    """`make reload` on the proxy host, which runs nothing else: when it returns, nginx has
    new workers and every old one has stopped accepting (retitled "is shutting down", or
    gone), so the next connection meets the new configuration."""
    before = nginx_worker_titles(net)
    net.reload(net.proxy, extra)
    after = nginx_worker_titles(net)
    assert set(after) - set(before), (before, after)
    still = {pid: title for pid, title in after.items() if pid in before}
    assert all("is shutting down" in title for title in still.values()), still


def test_the_proxy_serves_tls_after_a_reload_with_it_on(multihost_stack: Topology) -> None:
    """`make reload TLS=self-signed` on the proxy: HTTPS on its routable address, verified
    against the CA it made, HSTS, plain HTTP redirected; then back to plain HTTP."""
    net = multihost_stack
    https = f"https://{net.proxy.address}:8443"
    try:
        reload_proxy(net, {"TLS": "self-signed"})
        context = ssl.create_default_context(cafile=net.proxy.layout.tls_dir / "ca.pem")
        answer = httpx.get(f"{https}{ITEMS}", verify=context, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["strict-transport-security"] == "max-age=63072000"
        plain = httpx.get(f"{net.url}{ITEMS}", timeout=30)
        assert plain.status_code == 308
        assert plain.headers["location"] == f"{https}{ITEMS}"
    finally:
        reload_proxy(net)
    assert httpx.get(f"{net.url}{ITEMS}", timeout=30).status_code == 200


def test_the_proxy_runs_the_repos_nginx_conf_with_both_hosts_upstream(
    multihost_stack: Topology,
) -> None:
    rendered = multihost_stack.proxy.layout.nginx_conf.read_text()
    template = (ROOT / "nginx.conf").read_text()
    assert rendered.count("server notes-app:8000 max_fails=0;") == template.count(
        "server ${APP_UPSTREAM} max_fails=0;"
    )
    assert f"listen {multihost_stack.proxy.address}:" in rendered
    assert Path("/etc/netns", multihost_stack.proxy.netns, "hosts").read_text().count(
        "notes-app"
    ) == len(multihost_stack.apps)


def up_refused(run_dir: Path, env: dict[str, str]) -> str:
    """`python -m deploy.native up` with `env`, which must refuse: its message."""
    base = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_URL", "GUNICORN_BIND", "APP_UPSTREAM", "POOLER"}
    }
    result = subprocess.run(
        [sys.executable, "-m", "deploy.native", "up"],
        env={**base, "RUN_DIR": str(run_dir), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stderr


@pytest.mark.stack  # runs the runner, which installs nginx and Prometheus when missing
@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"STACK_ROLE": "app", "GUNICORN_BIND": "127.0.0.1:18000"},
            "an app host needs DATABASE_URL: the database host's PgBouncer",
        ),
        (
            {"STACK_ROLE": "app", "DATABASE_URL": "postgresql+asyncpg://u:p@192.0.2.1:6432/n"},
            "set GUNICORN_BIND=<this host's address>:8000",
        ),
        ({"STACK_ROLE": "proxy"}, "set APP_UPSTREAM=<name of every app host>:8000"),
    ],
    ids=["app-without-database", "app-on-a-socket", "proxy-without-app-hosts"],
)
def test_a_role_refuses_what_its_host_cannot_serve(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    assert message in up_refused(tmp_path, env)
    assert not RunLayout(tmp_path).gunicorn_pidfile.exists()
    assert not RunLayout(tmp_path).nginx_pidfile.exists()


def test_pgbouncer_open_to_other_hosts_needs_a_password(tmp_path: Path, pg_server: URL) -> None:
    """A DATABASE_URL role with no password that may not create the app role: the workers
    would log in as it, and PgBouncer on a routable address would let anyone in as it."""
    with fresh_database(pg_server, prefix="nopass") as url:
        owner = f"{url.database}_owner"
        statements = (
            f'CREATE ROLE "{owner}" LOGIN NOSUPERUSER NOCREATEROLE',
            f'ALTER DATABASE "{url.database}" OWNER TO "{owner}"',
        )
        run_sync(admin_execute(url, *statements))
        try:
            env = {
                "STACK_ROLE": "database",
                "POOLER": "pgbouncer",
                "LISTEN_ADDRESS": "192.0.2.1",  # not this machine's, and never reached
                "DATABASE_URL": url.set(username=owner).render_as_string(hide_password=False),
            }
            message = up_refused(tmp_path, env)
        finally:
            run_sync(admin_execute(pg_server, f'DROP DATABASE "{url.database}" WITH (FORCE)'))
            run_sync(admin_execute(pg_server, f'DROP ROLE "{owner}"'))
    assert "PgBouncer on 192.0.2.1 would let in whoever reaches that address" in message
    assert "give the workers' role one" in message
