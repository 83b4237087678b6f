"""gunicorn: one master and N uvicorn workers; each worker builds its own engine and pool.

This file runs in the master, outside the app, so it alone reads the environment directly.
Every number below is set on purpose; the README explains the reasons at more length.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RUN_DIR = Path(os.environ.get("RUN_DIR", ROOT / ".run")).resolve()
READY_DIR = RUN_DIR / "gunicorn" / "ready"
# Every process of this master (it, and the workers it forks) writes metrics here; it must be
# in the environment before prometheus_client is first imported.
METRICS_DIR = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(RUN_DIR / "metrics")))
# gunicorn writes its pid file before the first hook runs.
METRICS_DIR.mkdir(parents=True, exist_ok=True)

from prometheus_client import Gauge  # noqa: E402

from service import metrics_store  # noqa: E402
from service.capacity import BudgetExceededError, check_budget, default_workers  # noqa: E402
from service.config import ConfigurationError, load_settings  # noqa: E402
from service.logging import logging_config_dict  # noqa: E402

# A fresh master starts counting from zero; one that USR2 started (GUNICORN_PID set) runs
# beside the old master, whose workers' counts must survive the reload.
if "GUNICORN_PID" not in os.environ:
    metrics_store.reset(METRICS_DIR)

# Written by the master only, so its value is the configured count whatever the workers do.
WORKERS_CONFIGURED = Gauge(
    "gunicorn_workers_configured",
    "Worker processes gunicorn is configured to run.",
    multiprocess_mode="livemax",
    registry=None,
)

# The ASGI app; the tests serve a variant of it with a route that fails on purpose.
wsgi_app = os.environ.get("GUNICORN_APP", "service.main:app")
worker_class = "service.worker.Worker"
workers = int(os.environ.get("WEB_CONCURRENCY") or default_workers())

# A unix socket natively (only nginx on this host talks to it); a port in a container.
bind = [os.environ.get("GUNICORN_BIND", f"unix:{RUN_DIR / 'gunicorn.sock'}")]
backlog = 2048
pidfile = os.environ.get("GUNICORN_PIDFILE", str(RUN_DIR / "gunicorn.pid"))

# nginx is the only client and sets X-Forwarded-For to the address it saw. Over a unix socket
# the peer has no address, so nothing can be matched and "*" is the only value that works;
# that is safe because only nginx can reach the socket.
forwarded_allow_ips = os.environ.get(
    "FORWARDED_ALLOW_IPS", "*" if bind[0].startswith("unix:") else "127.0.0.1"
)

# Longer than nginx's upstream keepalive_timeout (5 s): nginx closes idle connections first,
# so it never sends a request into one the worker is closing ("upstream prematurely closed").
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
# A worker asked to stop finishes its requests within this many seconds, then is killed.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
# Seconds without a heartbeat before the master kills a worker whose event loop is stuck.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# Recycle workers now and then to bound slow leaks; the jitter keeps them from restarting
# together. Recycling drops no request, but a worker costs about a second of CPU to start and
# its replacement is forked only once it has drained: at ~1,000 req/s a worker, 200,000 means
# a recycle every few minutes, not every few seconds.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "200000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "20000"))
# The heartbeat file is written every few seconds per worker: keep it off a disk-backed dir.
if Path("/dev/shm").is_dir():  # noqa: S108 (tmpfs by intent; gunicorn makes the file private)
    worker_tmp_dir = "/dev/shm"  # noqa: S108

# The app's engine must be created in each worker's lifespan, never in the master.
preload_app = False

# One JSON log stream: gunicorn's own lines go through the app's structlog chain.
accesslog = None
logconfig_dict = logging_config_dict(
    os.environ.get("LOG_LEVEL", "INFO").upper(),  # type: ignore[arg-type]
    os.environ.get("LOG_FORMAT", "json"),  # type: ignore[arg-type]
)


def on_starting(server):  # type: ignore[no-untyped-def]
    """Before any worker: make the runtime dirs, then refuse a pool set that cannot fit."""
    READY_DIR.mkdir(parents=True, exist_ok=True)
    # A master started by USR2 (reload) runs beside the old one: leave its markers alone.
    if server.master_pid == 0:
        for marker in READY_DIR.iterdir():
            marker.unlink()
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        sys.exit(str(exc))
    try:
        budget = check_budget(settings, server.num_workers)
    except BudgetExceededError as exc:
        server.log.error(str(exc))
        sys.exit(1)
    except (OSError, TimeoutError) as exc:
        # The database may start after the stack; /readyz will report it until it does.
        server.log.warning("connection budget not checked, database unreachable: %s", exc)
        return
    server.log.info("connection budget ok: %s", budget.describe())


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    """Tell the worker where to mark itself ready once its lifespan has started."""
    worker.ready_marker = READY_DIR / str(worker.pid)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """A worker is gone (any cause): not ready any more, its counts go to the archive."""
    (READY_DIR / str(worker.pid)).unlink(missing_ok=True)
    metrics_store.archive_dead_worker(METRICS_DIR, worker.pid)


def nworkers_changed(server, new_value, old_value):  # type: ignore[no-untyped-def]
    """Keep a live scale (TTIN/TTOU) across a reload: USR2 re-executes with this environment."""
    server.cfg.env_orig["WEB_CONCURRENCY"] = str(new_value)
    WORKERS_CONFIGURED.set(new_value)


def on_exit(server):  # type: ignore[no-untyped-def]
    """The master is leaving: its own gauge must not outlive it."""
    metrics_store.archive_dead_worker(METRICS_DIR, os.getpid())
