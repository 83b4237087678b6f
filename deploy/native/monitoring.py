"""Prometheus, with the repo's config and rules, and the nginx exporter it scrapes."""

import json
import shutil
import signal

from deploy.native.processes import (
    http_status,
    log,
    port_open,
    read_pid,
    spawn,
    stop_process,
    wait_for,
)
from deploy.native.state import Stack
from service.config import ROOT

PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus"
DAEMONS = ("prometheus", "nginx-exporter")


def _start_daemon(stack: Stack, name: str, argv: list[str]) -> int:
    """Start a program that writes no pid file of its own, and write one for it."""
    pid = spawn(stack.layout.daemon_log(name), argv).pid
    stack.layout.pidfile(name).write_text(str(pid))
    return pid


def start_exporter(stack: Stack) -> None:
    """nginx's stub_status as Prometheus metrics (Debian's prometheus-nginx-exporter)."""
    if read_pid(stack.layout.pidfile("nginx-exporter")):
        log("nginx exporter: already running")
        return
    binary = shutil.which("prometheus-nginx-exporter") or "/usr/bin/prometheus-nginx-exporter"
    port = stack.settings.nginx_exporter_port
    pid = _start_daemon(
        stack,
        "nginx-exporter",
        [
            binary,
            f"-nginx.scrape-uri={stack.ops_url}/stub_status",
            f"-web.listen-address=127.0.0.1:{port}",
        ],
    )
    wait_for("the nginx exporter", lambda: port_open(port), 15)
    log(f"nginx exporter: pid {pid}")


def start_prometheus(stack: Stack) -> None:
    """Prometheus with the repo's config and rules, scraping this stack's ports."""
    if read_pid(stack.layout.pidfile("prometheus")):
        log("prometheus: already running")
        return
    directory = stack.layout.prometheus_dir
    (directory / "targets").mkdir(parents=True, exist_ok=True)
    # The same config and rules as compose (symlinks), with targets on this stack's ports.
    for name in ("prometheus.yml", "rules"):
        link = directory / name
        link.unlink(missing_ok=True)
        link.symlink_to(PROMETHEUS_CONFIG / name)
    settings = stack.settings
    # One target per app host when they are elsewhere, so that each has series of its own.
    app_targets = (settings.metrics_targets or "").split() or [f"127.0.0.1:{settings.ops_port}"]
    targets = {
        "notes": (app_targets, {"service": "notes"}),
        "nginx": ([f"127.0.0.1:{settings.nginx_exporter_port}"], {}),
        "prometheus": ([f"127.0.0.1:{settings.prometheus_port}"], {}),
    }
    for job, (addresses, labels) in targets.items():
        group = [{"targets": addresses, "labels": labels}]
        (directory / "targets" / f"{job}.json").write_text(json.dumps(group))
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    pid = _start_daemon(
        stack,
        "prometheus",
        [
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{settings.prometheus_port}",
        ],
    )
    wait_for(
        "Prometheus to be ready",
        lambda: http_status(f"{stack.prometheus_url}/-/ready") == 200,
        60,
        interval=0.25,
    )
    log(f"prometheus: pid {pid}")


def stop(stack: Stack) -> None:
    """Stop Prometheus and the exporter."""
    for name in DAEMONS:
        pidfile = stack.layout.pidfile(name)
        pid = read_pid(pidfile)
        if pid:
            stop_process(name, pid, signal.SIGTERM, 30)
            log(f"{name}: stopped")
        pidfile.unlink(missing_ok=True)
