"""The multiprocess metrics directory: locked scrapes, and dead workers folded into an archive.

Every worker writes its counters and histograms to files named by its pid. With `max_requests`
recycling workers, those files would pile up (thousands of them make a scrape take seconds).
When a worker exits, the master adds its counters and histograms into one archive file per type
and deletes the worker's files, so the directory holds the live workers' files plus two. A
scrape holds a shared lock and the merge an exclusive one, so no scrape ever sees a worker's
counts both in the archive and in its own file: totals stay exact.
"""

import fcntl
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Metric, generate_latest, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector

ARCHIVED_TYPES = ("counter", "histogram")


@contextmanager
def _locked(directory: Path, operation: int) -> Iterator[None]:
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, operation)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class DiskCollector(Collector):
    """Free and total bytes of the filesystem of each path, read at each scrape: the alert on
    low free disk (DiskSpaceLow) watches the run directory, where the private cluster, the
    logs and Prometheus's data live."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = paths

    def collect(self) -> Iterator[Metric]:
        free = GaugeMetricFamily(
            "stack_disk_free_bytes",
            "Bytes an unprivileged process may still write on the filesystem of path",
            labels=["path"],
        )
        size = GaugeMetricFamily(
            "stack_disk_size_bytes", "Size of the filesystem of path, in bytes", labels=["path"]
        )
        for path in self.paths:
            try:
                usage = shutil.disk_usage(path)
            except OSError:  # not there (a container without a run directory)
                continue
            free.add_metric([str(path)], usage.free)
            size.add_metric([str(path)], usage.total)
        yield free
        yield size


def render(directory: Path, disk_paths: Sequence[Path] = ()) -> bytes:
    """The exposition text of every live and dead worker's metrics, summed, and the free space
    of `disk_paths`."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    if disk_paths:
        registry.register(DiskCollector(disk_paths))
    with _locked(directory, fcntl.LOCK_SH):
        return generate_latest(registry)


def archive_dead_worker(directory: Path, pid: int) -> None:
    """Forget a dead worker's live gauges; add its counters and histograms to the archive."""
    multiprocess.mark_process_dead(pid, str(directory))
    with _locked(directory, fcntl.LOCK_EX):
        for kind in ARCHIVED_TYPES:
            dead = directory / f"{kind}_{pid}.db"
            if not dead.exists():
                continue
            archive = MmapedDict(str(directory / f"{kind}_archive.db"))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(dead)):
                    archived, _ = archive.read_value(key)
                    archive.write_value(key, archived + value, timestamp)
            finally:
                archive.close()
            dead.unlink()


def reset(directory: Path) -> None:
    """Empty the directory before a fresh start: counts begin at zero with the stack."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        if path.suffix == ".db":
            path.unlink()


def configured_multiprocess_dir() -> Path | None:
    """The multiprocess directory this process writes to, if any."""
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


# The pid each value write checks its file against, refreshed in a forked child: what
# prometheus_client asks `os.getpid()` on every single write, a system call that py-spy put at
# a third of the metrics' cost on a read (docs/performance.md).
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid  # noqa: PLW0603 (the one process-wide value, set once per fork)
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def cache_pid_for_values() -> None:
    """In multiprocess mode, make metrics created from now on check the pid cached above.

    prometheus_client documents the identifier as replaceable if it differs between processes
    running at the same time, which a pid refreshed at every fork does.
    """
    if values.ValueClass is not values.MutexValue:
        values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _pid)
