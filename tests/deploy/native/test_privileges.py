"""Nothing that serves runs as root, and gunicorn's socket is nginx's alone.

On the suite's shared stack, started as root (as `make test` runs): the uid of every serving
process, and who may connect to gunicorn's socket, tried as other local users.
"""

import grp
import os
import pwd
import stat
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from deploy.native.processes import read_pid
from deploy.native.settings import StackSettings
from tests.postgres import ROOT
from tests.stack import Stack

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the runner drops privileges only when started as root"
)
SERVICE_USER = StackSettings.model_fields["service_user"].default
NGINX_USER = StackSettings.model_fields["nginx_user"].default


def uids(pids: list[int]) -> set[str]:
    return {pwd.getpwuid(psutil.Process(pid).uids().real).pw_name for pid in pids}


def as_user(user: str, *argv: str, group: str | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` run as `user`, with its own group (or `group`) and no other."""
    entry = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    return subprocess.run(
        ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={gid}", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_no_serving_process_runs_as_root(stack: Stack) -> None:
    master = stack.master_pid()
    assert uids([master, *stack.worker_pids()]) == {SERVICE_USER}
    for daemon in ("prometheus", "nginx-exporter"):
        pid = read_pid(stack.layout.pidfile(daemon))
        assert pid is not None, daemon
        assert uids([pid]) == {SERVICE_USER}, daemon
    nginx_master = read_pid(stack.layout.nginx_pidfile)
    assert nginx_master is not None
    nginx_workers = [child.pid for child in psutil.Process(nginx_master).children()]
    assert nginx_workers
    assert uids(nginx_workers) == {NGINX_USER}
    # ... in the service user's group: the one that may enter gunicorn's directory.
    groups = {grp.getgrgid(psutil.Process(pid).gids().real).gr_name for pid in nginx_workers}
    assert groups == {SERVICE_USER}


def test_gunicorns_socket_is_for_nginxs_workers_alone(stack: Stack) -> None:
    directory, socket = stack.layout.gunicorn_dir, stack.layout.gunicorn_socket
    info = directory.stat()
    assert stat.S_IMODE(info.st_mode) == 0o750
    assert pwd.getpwuid(info.st_uid).pw_name == SERVICE_USER
    assert grp.getgrgid(info.st_gid).gr_name == SERVICE_USER
    assert stat.S_IMODE(socket.stat().st_mode) & 0o007 == 0

    connect = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "s.sendall(b'GET /healthz HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n'); print(s.recv(12).decode())"
    )
    # nginx's workers get an answer; any other local user cannot even reach the socket, nor
    # can nginx's user outside the service user's group.
    allowed = as_user(NGINX_USER, sys.executable, "-c", connect, str(socket), group=SERVICE_USER)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("HTTP/1.")
    for user in ("nobody", "daemon", NGINX_USER):
        refused = as_user(user, sys.executable, "-c", connect, str(socket))
        assert refused.returncode != 0, user
        assert "PermissionError" in refused.stderr, refused.stderr


def test_an_nginx_t_by_hand_leaves_the_workers_uploads_working(stack: Stack) -> None:
    """nginx hands its temporary directories to the user its config names; the user is in
    the rendered file, so an operator's `nginx -t` on it keeps them the workers'."""
    conf = stack.layout.nginx_conf
    checked = subprocess.run(
        ["nginx", "-t", "-p", str(conf.parent), "-c", str(conf)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    owner = pwd.getpwuid((conf.parent / "client_body").stat().st_uid).pw_name
    assert owner == NGINX_USER
    # A body past nginx's memory buffer goes through a temporary file: still answered.
    answer = httpx.post(f"{stack.url}/api/v1/notes", json={"text": "x" * 60_000}, timeout=30)
    assert answer.status_code == 422, answer.text


@pytest.mark.stack  # it adds a system user to this machine, and removes it
def test_two_runners_making_the_same_missing_account_both_get_it() -> None:
    """Stacks started at once on one machine (the suite's processes, two operators) each find
    the service user missing and run useradd: the one that loses the race uses the winner's."""
    name = f"notes-t{os.getpid() % 100000}"
    # Imported first, then all at one instant: each looks the name up before any useradd ends.
    code = (
        "import sys, time; from deploy.native.accounts import account; "
        "time.sleep(float(sys.argv[2]) - time.time()); print(account(sys.argv[1]).uid)"
    )
    at = str(time.time() + 2)
    try:
        runners = [
            subprocess.Popen([sys.executable, "-c", code, name, at], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
            for _ in range(4)
        ]  # fmt: skip
        answers = [runner.communicate(timeout=60) for runner in runners]
        assert [runner.returncode for runner in runners] == [0] * 4, answers
        # Each printed the uid it got last, after the one line of the runner that made it.
        assert {out.split()[-1] for out, _ in answers} == {str(pwd.getpwnam(name).pw_uid)}
        created = [out for out, _ in answers if "created the system user" in out]
        assert len(created) == 1, answers
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
