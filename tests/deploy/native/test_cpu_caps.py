"""The scaling lab's CPU caps (deploy/native/cpu_caps.py) and how a process reads its CPU
limit (service/runtime/cgroups.py): real cgroups on this machine, a real busy process, and
the stack's workers reporting their cap in `worker_cpu_limit_cores`."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from deploy.native.cpu_caps import PERIOD_US, CapKeeper, CpuCaps, CpuCapsUnavailableError
from service.runtime import cgroups
from service.runtime.cgroups import CpuHierarchy, cpu_limit
from tests.metrics import parse
from tests.stack import Stack


def lab(name: str, cores: float) -> CpuCaps:
    """Caps in a cgroup of this test's own, or a skip that says why this machine has none."""
    try:
        return CpuCaps.create(f"notes-test-{name}", cores)
    except CpuCapsUnavailableError as exc:
        pytest.skip(str(exc))


def busy_process() -> Iterator[psutil.Process]:
    """A process that keeps one core busy for as long as it is let."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield psutil.Process(process.pid)
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def busy() -> Iterator[psutil.Process]:
    """A busy process, for the caps to hold back."""
    yield from busy_process()


@pytest.fixture
def control() -> Iterator[psutil.Process]:
    """A busy process never capped: what the machine gives one right now, which busy
    neighbours make anything from a whole core to a small share of one."""
    yield from busy_process()


def cpu_shares(*processes: psutil.Process, seconds: float = 1.0) -> list[float]:
    """The share of a core each process used over the same `seconds`: ten of the kernel's
    100 ms quota periods, where a window cutting a period costs at most one period's quota
    (0.02 of 0.2)."""
    before = [sum(process.cpu_times()[:2]) for process in processes]
    time.sleep(seconds)
    after = [sum(process.cpu_times()[:2]) for process in processes]
    return [(end - start) / seconds for start, end in zip(before, after, strict=True)]


def test_a_capped_process_gets_its_share_and_all_of_it_back(
    busy: psutil.Process, control: psutil.Process
) -> None:
    caps = lab("busy", 0.2)
    origin = caps.hierarchy.group_of(busy.pid)
    # Both on one core, so that they share it with the same neighbours: on two cores, other
    # processes' bursts (the suite's other tests) fell on one of them more than the other.
    core = min(os.sched_getaffinity(0))
    for process in (busy, control):
        os.sched_setaffinity(process.pid, {core})
    assert caps.apply([busy.pid]) == [busy.pid]
    assert caps.apply([busy.pid]) == []  # already capped
    assert cpu_limit(busy.pid) == pytest.approx(0.2)
    # Against an uncapped twin over the same seconds, so that a busy neighbour, which leaves
    # both less, fails nothing: never above the cap; the cap's share, or all the machine
    # gives a busy process where that is less.
    capped, uncapped = cpu_shares(busy, control)
    assert capped <= 0.25, (capped, uncapped)
    assert capped >= 0.75 * min(0.2, uncapped), (capped, uncapped)
    caps.release()
    assert caps.hierarchy.group_of(busy.pid) == origin
    assert cpu_limit(busy.pid) is None
    # Uncapped: as much as its twin gets, on a quiet machine well above the cap (half the
    # core each).
    released, uncapped = cpu_shares(busy, control)
    assert released >= 0.75 * uncapped, (released, uncapped)
    assert not caps.parent.exists()


def test_release_removes_the_groups_of_processes_that_exited_capped(busy: psutil.Process) -> None:
    caps = lab("exited", 0.2)
    short = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    caps.apply([busy.pid, short.pid])
    short.kill()
    short.wait()
    # A worker that exited while the kernel still held its group busy: forgotten, group kept.
    (caps.parent / "worker-1").mkdir()
    caps.apply([busy.pid])  # forgets the exited one
    assert caps.capped == {busy.pid}
    caps.release()
    assert cpu_limit(busy.pid) is None
    assert not caps.parent.exists()


def test_the_keeper_caps_processes_that_start_later(busy: psutil.Process) -> None:
    caps = lab("keeper", 0.3)
    pids: list[int] = []
    with CapKeeper(caps, lambda: pids, interval=0.05).running():
        pids.append(busy.pid)  # a worker forked after the caps were set
        deadline = time.monotonic() + 5
        while busy.pid not in caps.capped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu_limit(busy.pid) == pytest.approx(0.3)
    assert cpu_limit(busy.pid) is None
    assert not caps.parent.exists()


def test_the_workers_report_their_cap(stack: Stack) -> None:
    caps = lab("workers", 0.25)

    def limits() -> dict[int, float]:
        samples = parse(httpx.get(f"{stack.ops_url}/metrics", timeout=10).text)
        return {
            int(dict(labels)["pid"]): value
            for (name, labels), value in samples.items()
            if name == "worker_cpu_limit_cores"
        }

    def wait_for(expected: float) -> dict[int, float]:
        deadline = time.monotonic() + 10  # workers sample every 2 s
        while time.monotonic() < deadline:
            seen = limits()
            workers = stack.worker_pids()
            if all(seen.get(pid) == pytest.approx(expected) for pid in workers):
                return seen
            time.sleep(0.5)
        return limits()

    uncapped = float(len(os.sched_getaffinity(0)))
    workers = stack.worker_pids()
    with CapKeeper(caps, stack.worker_pids).running():
        seen = wait_for(0.25)
        assert {pid: seen.get(pid) for pid in workers} == dict.fromkeys(workers, 0.25)
    seen = wait_for(uncapped)
    assert {pid: seen.get(pid) for pid in workers} == dict.fromkeys(workers, uncapped)


def test_without_a_cpu_controller_the_caps_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deploy.native.cpu_caps.cpu_hierarchy", lambda: None)
    with pytest.raises(CpuCapsUnavailableError, match=r"v1 `cpu` hierarchy .* cgroup v2"):
        CpuCaps.create("notes-test-none", 0.2)
    with pytest.raises(CpuCapsUnavailableError, match=r"at least 0\.01 of a CPU"):
        CpuCaps.create("notes-test-none", 0.001)


def test_an_unwritable_controller_names_the_fix(tmp_path: Path) -> None:
    hierarchy = CpuHierarchy(1, tmp_path / "missing" / "cpu", "/")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("deploy.native.cpu_caps.cpu_hierarchy", lambda: hierarchy)
        with pytest.raises(CpuCapsUnavailableError, match="run as root, or delegate"):
            CpuCaps.create("notes-test-unwritable", 0.2)


def test_cgroup_v2_quotas_are_read_and_written_as_cpu_max(tmp_path: Path) -> None:
    # A v2 tree as the kernel lays it out: the root has no cpu.max, each child one.
    hierarchy = CpuHierarchy(2, tmp_path, "/")
    outer, inner = tmp_path / "lab", tmp_path / "lab" / "worker-1"
    inner.mkdir(parents=True)
    (outer / "cpu.max").write_text("150000 100000\n")
    (inner / "cpu.max").write_text("max 100000\n")
    assert hierarchy.quota(tmp_path) is None
    assert hierarchy.quota(inner) is None
    assert hierarchy.limit(inner) == pytest.approx(1.5)  # the parent's quota binds
    caps = CpuCaps(hierarchy, outer, 0.25)
    caps.write_quota(inner)
    assert (inner / "cpu.max").read_text() == f"{PERIOD_US // 4} {PERIOD_US}"
    assert hierarchy.limit(inner) == pytest.approx(0.25)


def test_a_process_is_found_in_its_own_cgroup() -> None:
    hierarchy = cgroups.cpu_hierarchy()
    if hierarchy is None:
        pytest.skip("no cgroup CPU controller on this machine")
    group = hierarchy.group_of(os.getpid())
    assert group == hierarchy.mount or hierarchy.mount in group.parents
    assert (group / ("cpu.max" if hierarchy.version == 2 else "cpu.cfs_quota_us")).exists() or (
        hierarchy.version == 2 and group == hierarchy.mount
    )


def test_a_lab_whose_maker_died_is_released_by_the_next(busy: psutil.Process) -> None:
    maker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    caps = lab("stale", 0.2)
    # The lab as a process that was SIGKILLed would have left it: named after that process.
    dead = caps.parent.with_name(f"{caps.parent.name.rsplit('-', 1)[0]}-{maker.pid}")
    caps.parent.rename(dead)
    caps.parent = dead
    caps.apply([busy.pid])
    assert cpu_limit(busy.pid) == pytest.approx(0.2)
    maker.kill()
    maker.wait()
    fresh = lab("stale", 0.5)  # the next lab, by another sweep
    assert cpu_limit(busy.pid) is None
    assert not dead.exists()
    fresh.release()
