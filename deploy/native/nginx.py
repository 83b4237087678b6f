"""nginx: the repo's nginx.conf template rendered for native mode, started, reloaded, stopped."""

import math
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from deploy.native import accounts, tls
from deploy.native.processes import children, fail, log, read_pid, stop_process, wait_for
from deploy.native.state import Stack
from service.config import ROOT
from service.runtime.capacity import usable_cpus

TEMPLATE = ROOT / "nginx.conf"
PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


# nginx costs about a tenth of a request's CPU (docs/performance.md): one nginx worker per 8
# cores keeps up with workers that fill the other cores, and a worker that serves more of the
# connections finds more events ready each time it wakes.
CORES_PER_WORKER = 8


def default_worker_processes(cpus: int) -> int:
    """NGINX_WORKER_PROCESSES unset: one nginx worker per CORES_PER_WORKER cores, at least one
    (Compose's start script computes the same from the host's cores)."""
    return max(1, math.ceil(cpus / CORES_PER_WORKER))


def values(stack: Stack) -> dict[str, str]:
    """What native mode fills nginx.conf's placeholders with (compose fills the same ones)."""
    layout = stack.layout
    return {
        "NGINX_RUN_DIR": str(layout.nginx_dir),
        "NGINX_ACCESS_LOG": str(layout.nginx_access_log),
        "NGINX_ERROR_LOG": str(layout.nginx_error_log),
        "NGINX_WORKER_PROCESSES": str(
            stack.settings.nginx_worker_processes or default_worker_processes(usable_cpus())
        ),
        "LISTEN_ADDRESS": stack.settings.listen_address,
        "OPS_LISTEN_ADDRESS": "127.0.0.1",
        "HTTP_PORT": str(stack.settings.http_port),
        "OPS_PORT": str(stack.settings.ops_port),
        "APP_UPSTREAM": stack.settings.app_upstream or f"unix:{layout.gunicorn_socket}",
        "RATE_LIMIT_RPS": str(stack.settings.rate_limit_rps),
        "RATE_LIMIT_BURST": str(stack.settings.rate_limit_burst),
        "CONN_LIMIT": str(stack.settings.conn_limit),
    }


def exempt_geo(cidrs: str) -> str:
    """The `geo` entries of rate-limit-exempt.conf: `<cidr> 1;` for each network."""
    return "".join(f"{network} 1;\n" for network in cidrs.split())


def render(stack: Stack) -> bool:
    """Write the rendered config, check it with `nginx -t` (keeping the old one if it fails),
    and tell whether it differs from the config nginx runs with."""
    filled = values(stack)
    template = TEMPLATE.read_text()
    missing = set(PLACEHOLDER.findall(template)) - filled.keys()
    if missing:
        fail(f"nginx.conf has placeholders native mode does not fill: {sorted(missing)}")
    conf = stack.layout.nginx_conf
    conf.parent.mkdir(parents=True, exist_ok=True)
    # The files nginx.conf includes: a change to either is a change to the config.
    included = {
        conf.parent / "rate-limit-exempt.conf": exempt_geo(stack.settings.rate_limit_exempt),
        conf.parent / "tls.conf": tls.config(stack),
    }
    kept = {path: path.read_text() for path in included if path.exists()}
    for path, text in included.items():
        path.write_text(text)
    includes_changed = any(kept.get(path) != text for path, text in included.items())
    rendered = PLACEHOLDER.sub(lambda match: filled[match.group(1)], template)
    workers = accounts.unprivileged(stack.settings.nginx_user)
    if workers is not None:
        # As root: the workers as NGINX_USER (not nginx's built-in nobody), in the service
        # user's group, the one group that may reach gunicorn's socket. In the file, not on
        # the command line: an `nginx -t` by hand would give the workers' temporary
        # directories to whichever user it was told, and break the running workers' uploads.
        service = accounts.account(stack.settings.service_user)
        rendered = f"user {workers.name} {accounts.group_name(service.gid)};\n" + rendered
    previous = conf.read_text() if conf.exists() else None
    conf.write_text(rendered)
    result = run(stack, "-t", capture=True)
    if result.returncode != 0:
        if previous is not None:
            conf.write_text(previous)
        for path, text in kept.items():
            path.write_text(text)
        fail(f"nginx -t failed, the running config is unchanged:\n{result.stderr}")
    return rendered != previous or includes_changed


# NGINX_SCHED_POLICY: the policy nginx is started under; its workers, forked by the master,
# inherit it, those of a reload too. SCHED_BATCH weighs as nice 0 (the same share of the CPU,
# no starvation) and any process may take it, but its wake-ups do not preempt: nginx waits for
# a worker to block instead of taking the CPU from it at each event, and finds several events
# ready when it runs (docs/performance.md measures it).
POLICIES = {"batch": os.SCHED_BATCH, "other": os.SCHED_OTHER}


def run(stack: Stack, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the nginx binary against the rendered config."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    layout = stack.layout
    argv = [binary, "-p", str(layout.nginx_dir), "-c", str(layout.nginx_conf)]
    argv += ["-e", str(layout.nginx_error_log), *args]
    return subprocess.run(argv, capture_output=capture, text=True, check=False)


@contextmanager
def scheduled(name: str) -> Iterator[None]:
    """This thread under the policy `name` of POLICIES for the time of the block (a child
    started in it inherits the policy), then back to its own: a preexec_fn would set it in the
    child, but is not safe with threads. A kernel that refuses the policy (a sandbox, a
    process under SCHED_IDLE without CAP_SYS_NICE) is said, not fatal: it is speed only."""
    previous = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, POLICIES[name], os.sched_param(0))
    except OSError as exc:
        log(f"nginx: the kernel refused NGINX_SCHED_POLICY={name} ({exc.strerror}); "
            "nginx runs under the runner's own policy")  # fmt: skip
    try:
        yield
    finally:
        os.sched_setscheduler(0, *previous)


def _serve(stack: Stack) -> subprocess.CompletedProcess[str]:
    """Start nginx's master (it daemonizes) under NGINX_SCHED_POLICY."""
    with scheduled(stack.settings.nginx_sched_policy):
        return run(stack, capture=True)


def pid(stack: Stack) -> int | None:
    """The nginx master's pid, if it runs."""
    return read_pid(stack.layout.nginx_pidfile)


def start(stack: Stack) -> None:
    """Render the config and start nginx, unless it runs."""
    if pid(stack):
        log(f"nginx: already running (pid {pid(stack)})")
        return
    render(stack)
    result = _serve(stack)
    if result.returncode != 0:
        fail(f"nginx did not start:\n{result.stderr}")
    wait_for("nginx's pid file", lambda: pid(stack) is not None, 10)
    log(f"nginx: pid {pid(stack)}")


def reload_if_changed(stack: Stack) -> None:
    """Reload nginx only when its rendered config changed: nginx's own reload closes idle
    client keep-alive connections, which races a client's next request on them. Returns once
    the new configuration takes every new connection."""
    master = pid(stack)
    if master:
        _follow_the_policy(stack, master)
    if render(stack) and master:
        before = set(_workers(master))
        run(stack, "-s", "reload", capture=True)
        # `-s reload` only signals the master; until it has started new workers and told the
        # old ones to stop accepting, a new connection may still meet the old configuration.
        wait_for(
            "nginx's workers with the new configuration",
            lambda: _serving_the_new_configuration(master, before),
            30,
        )
        log("nginx: configuration changed and reloaded")


def _follow_the_policy(stack: Stack, master: int) -> None:
    """NGINX_SCHED_POLICY changed since nginx started: its master and workers take it now (the
    workers a reload forks inherit the master's)."""
    name = stack.settings.nginx_sched_policy
    changed = False
    for one in [master, *_workers(master)]:
        try:
            if os.sched_getscheduler(one) != POLICIES[name]:
                os.sched_setscheduler(one, POLICIES[name], os.sched_param(0))
                changed = True
        except ProcessLookupError:  # a worker gone meanwhile
            continue
        except OSError as exc:
            log(f"nginx: the kernel refused NGINX_SCHED_POLICY={name} ({exc.strerror})")
            return
    if changed:
        log(f"nginx: now under NGINX_SCHED_POLICY={name}")


def _workers(master: int) -> dict[int, str]:
    """nginx's worker processes and their titles ("nginx: worker process", "... is shutting
    down" once told to stop accepting)."""
    titles = {}
    for child in children(master):
        try:
            title = " ".join(psutil.Process(child).cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if "worker process" in title:
            titles[child] = title
    return titles


def _serving_the_new_configuration(master: int, before: set[int]) -> bool:
    workers = _workers(master)
    fresh = set(workers) - before
    return bool(fresh) and all(
        "is shutting down" in workers[old] for old in before if old in workers
    )


def stop(stack: Stack) -> None:
    """Graceful stop: nginx finishes the requests in flight."""
    master = pid(stack)
    if master:
        run(stack, "-s", "quit", capture=True)
        stop_process("nginx", master, signal.SIGQUIT, 30)
        log("nginx: stopped")
