"""The metrics directory under hundreds of dead workers: bounded files, exact totals."""

import time
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

from service.observability import metrics_store
from tests.metrics import parse, value

COUNTER_KEY = '["http_requests_total", "http_requests_total", {"method": "GET", "route": "/x", "status": "200"}, "HTTP requests answered."]'  # noqa: E501
BUCKET_KEY = '["db_pool_wait_seconds", "db_pool_wait_seconds_bucket", {"le": "0.001"}, "Wait."]'


def write_worker(directory: Path, pid: int, requests: int) -> None:
    """The files a worker process leaves behind, written the way prometheus_client does."""
    for kind, key in (("counter", COUNTER_KEY), ("histogram", BUCKET_KEY)):
        values = MmapedDict(str(directory / f"{kind}_{pid}.db"))
        values.write_value(key, float(requests), time.time())
        values.close()
    values = MmapedDict(str(directory / f"gauge_liveall_{pid}.db"))
    values.write_value('["worker_cpu_seconds", "worker_cpu_seconds", {}, "CPU."]', 1.0, time.time())
    values.close()


def totals(directory: Path) -> dict[str, float]:
    samples = parse(metrics_store.render(directory).decode())
    return {
        "http_requests_total": value(samples, "http_requests_total"),
        "db_pool_wait_seconds_bucket": value(samples, "db_pool_wait_seconds_bucket"),
        "live_workers": sum(name == "worker_cpu_seconds" for name, _ in samples),
    }


def test_hundreds_of_dead_workers_leave_two_files_and_exact_totals(tmp_path: Path) -> None:
    live = [100_000, 100_001]
    for pid in live:
        write_worker(tmp_path, pid, requests=5)
    for pid in range(1, 501):
        write_worker(tmp_path, pid, requests=pid % 7 + 1)
        metrics_store.archive_dead_worker(tmp_path, pid)

    expected = 2 * 5 + sum(pid % 7 + 1 for pid in range(1, 501))
    assert totals(tmp_path) == {
        "http_requests_total": expected,
        "db_pool_wait_seconds_bucket": expected,
        "live_workers": 2,
    }
    files = sorted(path.name for path in tmp_path.glob("*.db"))
    assert files == sorted(
        ["counter_archive.db", "histogram_archive.db"]
        + [f"{kind}_{pid}.db" for pid in live for kind in ("counter", "histogram")]
        + [f"gauge_liveall_{pid}.db" for pid in live]
    )
    # What a scrape costs is what it reads: the live workers' files and two archives, never
    # one file per dead worker (timing it would only measure the machine's load).


def test_reset_empties_the_directory(tmp_path: Path) -> None:
    write_worker(tmp_path, 1, requests=3)
    metrics_store.reset(tmp_path)
    assert not list(tmp_path.glob("*.db"))
