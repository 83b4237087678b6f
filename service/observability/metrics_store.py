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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.mmap_dict import MmapedDict

ARCHIVED_TYPES = ("counter", "histogram")


@contextmanager
def _locked(directory: Path, operation: int) -> Iterator[None]:
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, operation)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def render(directory: Path) -> bytes:
    """The exposition text of every live and dead worker's metrics, summed."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
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
