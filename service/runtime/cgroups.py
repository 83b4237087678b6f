"""The CPU a process may use under Linux control groups, v1 and v2 alike.

A process's CPU limit is the smallest quota on the path from its own cgroup up to the root of
the hierarchy that holds the `cpu` controller: a container's quota, a systemd slice's, or the
per-worker caps of the scaling lab (`deploy/native/cpu_caps.py`). Reading `/sys/fs/cgroup`'s
top-level files alone is right only inside a container with its own cgroup namespace; this
follows /proc/<pid>/cgroup and /proc/self/mountinfo instead, so it is right everywhere.
"""

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class CpuHierarchy:
    """The mounted cgroup hierarchy that carries the `cpu` controller."""

    version: Literal[1, 2]
    mount: Path  # where it is mounted
    root: str  # the cgroup that mount shows at its top ("/" unless bind-mounted from deeper)

    def group_of(self, pid: int | Literal["self"] = "self") -> Path:
        """The directory of the cgroup process `pid` is in (under the mount)."""
        for line in (PROC / str(pid) / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            ours = controllers == "" if self.version == 2 else "cpu" in controllers.split(",")
            if ours:
                inside = path.startswith(self.root)
                return self.mount / (os.path.relpath(path, self.root) if inside else ".")
        msg = f"process {pid} is in no {self.version_name} cgroup"
        raise LookupError(msg)

    @property
    def version_name(self) -> str:
        """ "cgroup v1" or "cgroup v2"."""
        return f"cgroup v{self.version}"

    def quota(self, group: Path) -> float | None:
        """The CPU quota of `group` itself, in cores; None when it sets none."""
        try:
            if self.version == 2:
                quota, _, period = (group / "cpu.max").read_text().partition(" ")
                return None if quota == "max" else int(quota) / int(period)
            quota_us = int((group / "cpu.cfs_quota_us").read_text())
            period_us = int((group / "cpu.cfs_period_us").read_text())
        except (FileNotFoundError, ValueError):
            return None  # the root group of a v2 hierarchy has no cpu.max
        return None if quota_us <= 0 else quota_us / period_us

    def limit(self, group: Path) -> float | None:
        """The smallest quota from `group` up to the mount's top, in cores; None if none."""
        quotas = []
        current = group
        while True:
            quota = self.quota(current)
            if quota is not None:
                quotas.append(quota)
            if current == self.mount or self.mount not in current.parents:
                break
            current = current.parent
        return min(quotas, default=None)


@functools.cache
def cpu_hierarchy() -> CpuHierarchy | None:
    """The hierarchy with the `cpu` controller this process sees; None when none is mounted.

    A v1 `cpu` hierarchy wins: on a hybrid host the v2 mount carries no `cpu` controller.
    """
    v2: CpuHierarchy | None = None
    for line in (PROC / "self" / "mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        fstype, _source, options = [*tail.split(), "", "", ""][:3]
        root, mount = parts[3], Path(parts[4])
        if fstype == "cgroup" and "cpu" in options.split(","):
            return CpuHierarchy(1, mount, root)
        if fstype == "cgroup2" and v2 is None and _has_cpu_controller(mount):
            v2 = CpuHierarchy(2, mount, root)
    return v2


def _has_cpu_controller(mount: Path) -> bool:
    try:
        return "cpu" in (mount / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def cpu_limit(pid: int | Literal["self"] = "self") -> float | None:
    """The CPU quota that binds process `pid`, in cores; None when no cgroup limits it."""
    hierarchy = cpu_hierarchy()
    if hierarchy is None:
        return None
    try:
        return hierarchy.limit(hierarchy.group_of(pid))
    except (LookupError, OSError):
        return None


def cpu_allowance() -> float:
    """The most CPU this process can use, in cores: its quota, or the CPUs it may run on."""
    cpus = float(len(os.sched_getaffinity(0)))
    quota = cpu_limit()
    return cpus if quota is None else min(cpus, quota)
