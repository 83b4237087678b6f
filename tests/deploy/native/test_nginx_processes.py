"""nginx's processes in native mode: their settings, and the scheduling policy the runner
starts nginx under (the running stacks' nginx: test_stack.py and test_limits.py)."""

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from deploy.native.settings import StackSettings
from tests.postgres import ROOT

# What the runner's thread runs under inside `scheduled(...)`, then after it.
PROBE = """
import os
from deploy.native.nginx import scheduled
with scheduled({name!r}):
    inside = os.sched_getscheduler(0)
print(inside, os.sched_getscheduler(0))
"""


def _probe(name: str, *prefix: str) -> list[str]:
    result = subprocess.run(
        [*prefix, sys.executable, "-c", PROBE.format(name=name)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return result.stdout.splitlines()


def test_the_runner_takes_the_policy_for_the_start_only() -> None:
    assert _probe("batch") == [f"{os.SCHED_BATCH} {os.SCHED_OTHER}"]
    assert _probe("other") == [f"{os.SCHED_OTHER} {os.SCHED_OTHER}"]


def test_a_policy_the_kernel_refuses_is_said_and_changes_nothing() -> None:
    """Under SCHED_IDLE and without CAP_SYS_NICE, a process may not leave SCHED_IDLE: `up`
    says so and goes on, nginx under the runner's own policy."""
    unprivileged = ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"]
    lines = _probe("batch", "chrt", "--idle", "0", *(unprivileged if os.geteuid() == 0 else []))
    assert lines[0] == (
        "stack: nginx: the kernel refused NGINX_SCHED_POLICY=batch (Operation not permitted); "
        "nginx runs under the runner's own policy"
    )
    assert lines[1:] == [f"{os.SCHED_IDLE} {os.SCHED_IDLE}"]


def test_nginx_worker_processes_empty_is_unset_and_below_one_is_refused() -> None:
    assert StackSettings(nginx_worker_processes="").nginx_worker_processes is None
    assert StackSettings(nginx_worker_processes="4").nginx_worker_processes == 4
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        StackSettings(nginx_worker_processes="0")
    with pytest.raises(ValidationError, match="Input should be 'batch' or 'other'"):
        StackSettings(nginx_sched_policy="fifo")
