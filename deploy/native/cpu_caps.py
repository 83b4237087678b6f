"""The scaling lab's CPU caps: each gunicorn worker in a cgroup of its own, allowed a fraction
of a CPU, so that a small machine shows how throughput grows with workers on a big one.

    caps = CpuCaps.create("notes-lab", cores=0.2)   # CpuCapsUnavailableError says why not
    caps.apply(worker_pids)                          # again whenever workers change
    caps.release()                                   # every process back where it was

Works with the cgroup v1 `cpu` controller and with cgroup v2 where it carries `cpu`; both need
root (or a delegated subtree). The caps belong to the lab, not to the stack: a worker started
after `apply` runs uncapped until the next `apply`, which `CapKeeper` calls for you.

The lab's cgroups are `<prefix>-<pid of the process that made them>/worker-<pid>`. A lab whose
maker died without releasing them (SIGKILL) would keep its workers capped: the next `create`
with the same prefix moves their processes back beside itself and removes those cgroups.
"""

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from deploy.native.processes import alive
from service.runtime.cgroups import CpuHierarchy, cpu_hierarchy

# CFS period: the quota is spent over windows this long; the kernel's default, 100 ms. A worker
# capped at 0.2 CPU runs 20 ms and is then frozen for 80, which costs latency, not throughput.
# Finer windows cost throughput: at 10 ms a worker capped at 0.2 spent 1.7 to 2.4 ms of CPU per
# request against 1.3 to 1.5 at 100 ms (1.1 uncapped), each 2 ms slice starting on caches the
# rest of the machine had filled (docs/performance.md, "Scaling lab").
PERIOD_US = 100_000
# Below this, a cap is mostly scheduling noise (the kernel's minimum quota is 1 ms).
MIN_CORES = 0.01
# How long a cgroup that has just been emptied may stay busy: the kernel answers rmdir with
# EBUSY until an exiting process has left it all the way, which takes a moment on a loaded host.
RMDIR_PATIENCE_S = 5.0


class CpuCapsUnavailableError(RuntimeError):
    """This machine cannot cap a process's CPU here, and the message says why."""


class CpuCapsLeftBehindError(RuntimeError):
    """Every process is uncapped, but the kernel kept one of the lab's (empty) cgroups busy."""


class CpuCaps:
    """A cgroup `<name>/worker-<pid>` per capped process, each with the same CPU quota."""

    def __init__(self, hierarchy: CpuHierarchy, parent: Path, cores: float) -> None:
        self.hierarchy = hierarchy
        self.parent = parent
        self.cores = cores
        # Each capped pid and the cgroup it came from, to go back to.
        self._origins: dict[int, Path] = {}

    @classmethod
    def create(cls, prefix: str, cores: float) -> "CpuCaps":
        """Make this process's lab cgroup `<prefix>-<pid>` (after releasing the labs of dead
        processes); CpuCapsUnavailableError with the reason if it cannot."""
        if cores < MIN_CORES:
            msg = f"a CPU cap must be at least {MIN_CORES} of a CPU, not {cores:g}"
            raise CpuCapsUnavailableError(msg)
        hierarchy = cpu_hierarchy()
        if hierarchy is None:
            msg = (
                "CPU caps need a cgroup CPU controller, and none is mounted: neither a cgroup "
                "v1 `cpu` hierarchy (usually /sys/fs/cgroup/cpu) nor a cgroup v2 hierarchy "
                "with `cpu` in cgroup.controllers"
            )
            raise CpuCapsUnavailableError(msg)
        parent = hierarchy.mount / f"{prefix}-{os.getpid()}"
        try:
            release_stale(hierarchy, prefix)
            if hierarchy.version == 2:
                # v2 hands a controller down one level at a time, from the root.
                _enable_cpu(hierarchy.mount)
            parent.mkdir(exist_ok=True)
            if hierarchy.version == 2:
                _enable_cpu(parent)
        except OSError as exc:
            msg = (
                f"CPU caps need to write to the {hierarchy.version_name} CPU controller at "
                f"{hierarchy.mount}, and cannot ({exc.strerror}): run as root, or delegate "
                "that subtree to this user"
            )
            raise CpuCapsUnavailableError(msg) from exc
        return cls(hierarchy, parent, cores)

    @property
    def capped(self) -> set[int]:
        """The pids capped now (some may have exited since)."""
        return set(self._origins)

    def apply(self, pids: Iterable[int]) -> list[int]:
        """Cap each pid not capped yet, in a cgroup of its own; the pids newly capped."""
        self._forget_exited()
        newly = []
        for pid in pids:
            if pid in self._origins:
                continue
            try:
                origin = self.hierarchy.group_of(pid)
            except (FileNotFoundError, ProcessLookupError, LookupError):
                continue  # it exited meanwhile
            group = self._group(pid)
            group.mkdir(exist_ok=True)
            self.write_quota(group)
            try:
                (group / "cgroup.procs").write_text(str(pid))
            except ProcessLookupError:
                _rmdir(group)
                continue
            self._origins[pid] = origin
            newly.append(pid)
        return newly

    def release(self) -> None:
        """Every capped process back into its own cgroup, then the lab's cgroups removed:
        CpuCapsLeftBehindError if the kernel still holds one busy after RMDIR_PATIENCE_S."""
        for pid, origin in self._origins.items():
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                (origin / "cgroup.procs").write_text(str(pid))
        self._origins.clear()
        try:
            # Every worker group, also those of workers that exited while it was busy.
            for group in self.parent.glob("worker-*"):
                _rmdir(group)
            _rmdir(self.parent)
        except OSError as exc:
            msg = (
                f"the capped processes are uncapped, but {exc.filename} could not be removed "
                f"({exc.strerror}); rmdir it once the kernel lets go of it"
            )
            raise CpuCapsLeftBehindError(msg) from exc

    def write_quota(self, group: Path) -> None:
        """Give `group` this lab's quota, in the format of its cgroup version."""
        quota_us = round(self.cores * PERIOD_US)
        if self.hierarchy.version == 2:
            (group / "cpu.max").write_text(f"{quota_us} {PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota_us))

    def _group(self, pid: int) -> Path:
        return self.parent / f"worker-{pid}"

    def _forget_exited(self) -> None:
        """Drop the processes that have exited, and their cgroups where the kernel lets go of
        them already (`release` removes the others)."""
        for pid in [pid for pid in self._origins if not alive(pid)]:
            with contextlib.suppress(OSError):  # EBUSY while the process is still leaving
                self._group(pid).rmdir()
            del self._origins[pid]


def release_stale(hierarchy: CpuHierarchy, prefix: str) -> list[int]:
    """Lift the caps of labs whose maker has died: their processes go back into this
    process's own cgroup, their cgroups are removed; the pids released."""
    home = hierarchy.group_of("self")
    released = []
    for lab in hierarchy.mount.glob(f"{prefix}-*"):
        owner = lab.name.removeprefix(f"{prefix}-")
        if not owner.isdigit() or alive(int(owner)):
            continue
        for group in lab.glob("worker-*"):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    (home / "cgroup.procs").write_text(pid)
                    released.append(int(pid))
            _rmdir(group)
        _rmdir(lab)
    return released


def _rmdir(group: Path) -> None:
    """Remove an empty cgroup, waiting up to RMDIR_PATIENCE_S while the kernel says EBUSY."""
    deadline = time.monotonic() + RMDIR_PATIENCE_S
    while True:
        try:
            group.rmdir()
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


def _enable_cpu(group: Path) -> None:
    control = group / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu")


class CapKeeper:
    """Keeps every process that `pids()` names capped, checking every `interval` seconds, so a
    worker forked by a scale or a recycle is capped within that time."""

    def __init__(self, caps: CpuCaps, pids: Callable[[], Iterable[int]], interval: float = 0.25):
        self.caps = caps
        self.pids = pids
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cap-keeper", daemon=True)

    def sync(self) -> list[int]:
        """Cap the processes that are not yet; the pids newly capped."""
        return self.caps.apply(self.pids())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, LookupError):
                self.sync()

    @contextlib.contextmanager
    def running(self) -> Iterator["CapKeeper"]:
        """Keep the caps while the block runs; release them all after."""
        self.sync()
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.caps.release()
