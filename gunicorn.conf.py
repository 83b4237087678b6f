"""gunicorn: one master and N uvicorn workers; each worker builds its own engine and pool.

This file runs in the master, outside the app. Every knob it reads is declared, with its
default and the reason for it, in service.config (GunicornSettings, and BudgetSettings for the
connection budget check); paths come from service.runtime.layout.
"""

import os
import sys
from pathlib import Path

from service.config import BudgetSettings, ConfigurationError, GunicornSettings, load
from service.runtime.layout import GunicornLayout

try:
    SETTINGS = load(GunicornSettings)
    # The app's settings as the budget check needs them: with the hosts and PgBouncer's sizes.
    APP_SETTINGS = load(BudgetSettings)
except ConfigurationError as exc:
    sys.exit(str(exc))
LAYOUT = GunicornLayout(SETTINGS.run_dir.resolve())
# Every process of this master (it, and the workers it forks) writes metrics here; it must be
# in the environment before prometheus_client is first imported.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(LAYOUT.metrics_dir)
# gunicorn writes its pid file before the first hook runs.
LAYOUT.metrics_dir.mkdir(parents=True, exist_ok=True)

from prometheus_client import Gauge  # noqa: E402

from service.observability import metrics_store  # noqa: E402
from service.observability.logging import logging_config_dict  # noqa: E402
from service.runtime.capacity import BudgetExceededError, check_budget, default_workers  # noqa: E402

# A fresh master starts counting from zero; one that USR2 started (GUNICORN_PID set) runs
# beside the old master, whose workers' counts must survive the reload.
if "GUNICORN_PID" not in os.environ:
    metrics_store.reset(LAYOUT.metrics_dir)

# Written by the master only, so its value is the configured count whatever the workers do.
WORKERS_CONFIGURED = Gauge(
    "gunicorn_workers_configured",
    "Worker processes gunicorn is configured to run.",
    multiprocess_mode="livemax",
    registry=None,
)

# Each value and the reason for it is declared in service.config.GunicornSettings.
# Every worker serves the app APP names (from APP_PATH), wrapped by the stack.
wsgi_app = "service.stack.asgi:create_stack()"
worker_class = "service.runtime.worker.Worker"
workers = SETTINGS.web_concurrency or default_workers()

bind = [SETTINGS.gunicorn_bind or f"unix:{LAYOUT.gunicorn_socket}"]
# The socket is made 0770: its directory's group (nginx's workers) may connect, no one else.
umask = 0o007
backlog = 2048
pidfile = str(LAYOUT.gunicorn_pidfile)
# gunicorn's control socket (0600), in its own directory: by default it is one per user's
# home, shared by every stack on the host, and the service user has no home.
control_socket = str(LAYOUT.gunicorn_dir / "control.sock")
forwarded_allow_ips = SETTINGS.forwarded_allow_ips or (
    "*" if bind[0].startswith("unix:") else "127.0.0.1"
)
keepalive = SETTINGS.gunicorn_keepalive
graceful_timeout = SETTINGS.gunicorn_graceful_timeout
timeout = SETTINGS.gunicorn_timeout
max_requests = SETTINGS.gunicorn_max_requests
max_requests_jitter = SETTINGS.gunicorn_max_requests_jitter
# The heartbeat file is written every few seconds per worker: keep it off a disk-backed dir.
if Path("/dev/shm").is_dir():  # noqa: S108 (tmpfs by intent; gunicorn makes the file private)
    worker_tmp_dir = "/dev/shm"  # noqa: S108

# The app's engine must be created in each worker's lifespan, never in the master.
preload_app = False

# One JSON log stream: gunicorn's own lines go through the app's structlog chain.
accesslog = None
# Native mode: every line to LOG_FILE, which the master and each worker reopen on SIGUSR1 when
# the runner rotates it (deploy/native/rotation.py); stdout and stderr go there too. Without
# it (containers), stdout, for the engine to collect.
errorlog = str(SETTINGS.log_file) if SETTINGS.log_file else "-"
capture_output = SETTINGS.log_file is not None
logconfig_dict = logging_config_dict(APP_SETTINGS.log_level, APP_SETTINGS.log_format)


def on_starting(server):  # type: ignore[no-untyped-def]
    """Before any worker: make the runtime dirs, then refuse a pool set that cannot fit."""
    LAYOUT.ready_dir.mkdir(parents=True, exist_ok=True)
    # A master started by USR2 (reload) runs beside the old one: leave its markers alone.
    if server.master_pid == 0:
        for marker in LAYOUT.ready_dir.iterdir():
            marker.unlink()
    try:
        budget = check_budget(APP_SETTINGS, server.num_workers)
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
    worker.ready_marker = LAYOUT.ready_marker(worker.pid)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """A worker is gone (any cause): not ready any more, its counts go to the archive."""
    LAYOUT.ready_marker(worker.pid).unlink(missing_ok=True)
    metrics_store.archive_dead_worker(LAYOUT.metrics_dir, worker.pid)


def nworkers_changed(server, new_value, old_value):  # type: ignore[no-untyped-def]
    """Keep a live scale (TTIN/TTOU) across a reload: USR2 re-executes with this environment."""
    server.cfg.env_orig["WEB_CONCURRENCY"] = str(new_value)
    WORKERS_CONFIGURED.set(new_value)


def on_exit(server):  # type: ignore[no-untyped-def]
    """The master is leaving: its own gauge must not outlive it."""
    metrics_store.archive_dead_worker(LAYOUT.metrics_dir, os.getpid())
