"""What the sweep's figures mean (loadtest/plan.py): each step's limit, the recommendation,
the knee the lab's caps predict, and the capacity plan; on figures written down, no stack."""

from typing import Any

import pytest

from loadtest.database_size import BufferReads, DatabaseSize
from loadtest.plan import Step, capacity_plan, knee_count, predicted_knee, recommend
from service.runtime.capacity import ConnectionBudget


def step(workers: int, rps: float, p99: float, **overrides: float) -> Step:
    figures: dict[str, Any] = {
        "p50_ms": 5.0, "p95_ms": 20.0, "failure_ratio": 0.0, "worker_cpu": 0.5,
        "total_worker_cpu": 0.5 * workers, "machine_cpu": 0.5, "pool_in_use": 0.2,
        "pool_wait_p99_ms": 0.1, "locust_cpu": 0.3,
    }  # fmt: skip
    figures.update(overrides)
    return Step(workers=workers, requests_per_second=rps, p99_ms=p99, **figures)


def test_recommendation_is_the_smallest_count_near_the_best() -> None:
    steps = [
        step(1, 900, 40, worker_cpu=0.98),
        step(2, 1500, 30, worker_cpu=0.9),
        step(3, 1540, 35),
        step(4, 1560, 700),  # fastest, but its p99 is unacceptable
    ]
    chosen, reason = recommend(steps, max_p99_ms=500, max_failure_ratio=0.01)
    assert chosen.workers == 2
    assert reason.startswith("limited by the workers' CPU: workers at 90% of one core each")


def test_recommendation_names_the_pool_when_requests_wait_for_a_connection() -> None:
    waiting = {"pool_wait_p99_ms": 25.0, "pool_in_use": 0.95}
    steps = [step(2, 1000, 40), step(3, 1010, 60, **waiting)]
    chosen, reason = recommend(steps, max_p99_ms=500, max_failure_ratio=0.01)
    assert chosen.workers == 2
    steps = [step(2, 500, 40), step(3, 1000, 60, **waiting)]
    chosen, reason = recommend(steps, max_p99_ms=500, max_failure_ratio=0.01)
    assert chosen.workers == 3
    assert reason.startswith("limited by the pool: every connection busy")
    # Connections busy in PostgreSQL with nobody waiting for one: the database.
    steps = [step(2, 500, 40), step(3, 1000, 60, pool_in_use=0.95)]
    assert recommend(steps, 500, 0.01)[1].startswith("limited by the database")


def lab_step(workers: int, rps: float, **overrides: float) -> Step:
    """A step of a lab sweep on 2 CPUs, workers capped at 0.1 CPU and each request costing the
    workers 0.5 ms and everything else 0.5 ms of CPU."""
    figures: dict[str, Any] = {
        "p50_ms": 5.0, "p95_ms": 20.0, "p99_ms": 40.0, "failure_ratio": 0.0,
        "total_worker_cpu": rps * 0.0005, "worker_cpu": rps * 0.0005 / workers / 0.1,
        "machine_cpu": rps * 0.001 / 2, "pool_in_use": 0.2, "pool_wait_p99_ms": 0.1,
        "locust_cpu": rps * 0.0002, "postgres_cpu": rps * 0.0002, "nginx_cpu": rps * 0.0001,
        "cpu_cap": 0.1, "cpus": 2, "locust_processes": 2,
    }  # fmt: skip
    figures.update(overrides)
    return Step(workers=workers, requests_per_second=rps, **figures)


def test_the_caps_predict_the_knee_where_they_add_up_to_the_machine() -> None:
    # 0.5 ms of worker CPU and 0.5 ms elsewhere per request: a worker capped at 0.1 CPU
    # serves 200 req/s and needs 0.2 CPU with the rest; 2 CPUs run out at 10 workers.
    steps = [lab_step(1, 200), lab_step(2, 400), lab_step(4, 800)]
    knee = predicted_knee(steps)
    assert knee == pytest.approx(10.0)
    assert knee_count(10.0, [1, 2, 4, 8, 12, 16]) == 12
    assert knee_count(9.9, [1, 2, 4, 8, 12]) == 12
    assert knee_count(4.8, [1, 2, 4, 6]) == 6  # 4 workers serve 83% of the plateau
    assert knee_count(4.1, [1, 2, 4, 6]) == 4  # 4 workers serve 98% of it
    assert knee_count(30.0, [1, 2, 4]) == 4
    assert predicted_knee([step(1, 900, 40), step(2, 1500, 30)]) is None  # uncapped
    # 0.3 CPU busy whatever the load leaves 1.7 for the workers and what serves them.
    background = [lab_step(n, 200 * n, machine_cpu=(0.3 + 0.2 * n) / 2) for n in (1, 2, 4)]
    assert predicted_knee(background) == pytest.approx(8.5)


def test_a_lab_sweep_recommends_where_throughput_stops_growing() -> None:
    steps = [
        lab_step(1, 200),
        lab_step(2, 400),
        lab_step(4, 790),
        lab_step(8, 1560),
        lab_step(12, 1950, worker_cpu=0.81, machine_cpu=0.97),
        lab_step(16, 1970, worker_cpu=0.62, machine_cpu=0.98),
    ]
    chosen, reason = recommend(steps, max_p99_ms=500, max_failure_ratio=0.01)
    assert chosen.workers == knee_count(predicted_knee(steps) or 0, [s.workers for s in steps])
    assert reason.startswith("limited by the machine: 97% of 2 CPUs busy")
    assert steps[1].limit()[0] == "workers' CPU"
    assert "their 0.1-CPU cap" in steps[1].limit()[1]


def test_a_sweep_still_rising_at_its_end_says_to_sweep_further() -> None:
    steps = [lab_step(1, 200), lab_step(2, 400), lab_step(4, 800)]
    chosen, reason = recommend(steps, max_p99_ms=500, max_failure_ratio=0.01)
    assert chosen.workers == 4
    assert "sweep further" in reason


def test_each_step_names_what_limited_it() -> None:
    assert step(1, 900, 40, locust_cpu=1.9, locust_processes=2).limit()[0] == "load generator"
    assert step(1, 900, 40, locust_cpu=1.9, locust_processes=4).limit()[0] == "offered load"
    assert step(2, 900, 40, worker_cpu=0.9).limit()[0] == "workers' CPU"
    assert step(2, 900, 40, machine_cpu=0.95).limit()[0] == "machine"
    waiting = {"pool_in_use": 0.95, "pool_wait_p99_ms": 30.0}
    assert step(2, 900, 40, **waiting).limit()[0] == "pool"
    # Queued behind a throttled worker, not behind the pool: the pool was mostly idle.
    assert step(2, 900, 40, pool_in_use=0.3, pool_wait_p99_ms=300.0).limit()[0] == "offered load"


def test_the_capacity_plan_projects_the_measured_costs_onto_a_host() -> None:
    steps = [lab_step(1, 200), lab_step(2, 400), lab_step(4, 800)]
    database = ConnectionBudget(workers=1, per_worker=5, max_connections=200, reserved=3)
    plan = capacity_plan(steps, cores=16, budget=database)
    assert plan.worker_ms == pytest.approx(0.5)
    assert plan.per_core == pytest.approx(2000)
    assert plan.nginx_ms == pytest.approx(0.1)
    assert plan.workers == 16
    assert plan.requests_per_second == pytest.approx(16 * 1000 / 0.6)
    assert plan.database_cores == pytest.approx(plan.requests_per_second * 0.0002)
    assert plan.budget.needed == 16 * 5 + 1 + 4
    assert plan.budget.max_workers == (197 - 5) // 5
    text = " ".join(plan.describe())
    assert "0.50 ms of CPU per request" in text
    assert "A host of **16 cores**" in text
    assert "beyond **38 workers in all**, that is beyond 2 such hosts" in text
    # A small host still gets two workers.
    assert capacity_plan(steps, cores=1, budget=database).workers == 2


def test_the_plan_says_what_postgresqls_cost_was_measured_on() -> None:
    steps = [lab_step(1, 200), lab_step(2, 400)]
    budget = ConnectionBudget(workers=1, per_worker=5, max_connections=200, reserved=3)
    mb = 1024 * 1024
    measured = DatabaseSize(
        bytes=2_000 * mb,
        tables=(("notes", 10_000_000, 1_900 * mb),),
        shared_buffers=128 * mb,
        index_bytes=400 * mb,
        blocks=BufferReads(hits=1_999_000, reads=1_000),
    )
    start = BufferReads(hits=1_000_000, reads=0)
    fitted = capacity_plan(steps, cores=4, budget=budget, database=measured.during(start))
    text = " ".join(fitted.describe())
    assert "0.20 ms per request was measured on notes ≈ 10,000,000 rows" in text
    assert "served 99.9% of its block reads: the load's working set fitted" in text
    assert "(its indexes, which every request walks, are 400.0 MB)" in text

    outgrown = measured.during(BufferReads(hits=1_990_000, reads=0))
    assert outgrown.hit_ratio == pytest.approx(9_000 / 10_000)
    text = " ".join(capacity_plan(steps, cores=4, budget=budget, database=outgrown).describe())
    assert "served only 90.0% of its block reads: the working set outgrew it" in text
    assert "at least its indexes (400.0 MB) in shared_buffers" in text

    # Nothing read during the load, or no figures: said, not guessed.
    assert measured.during(BufferReads(hits=1_999_000, reads=1_000)).hit_ratio is None
    assert "is unknown" in " ".join(
        capacity_plan(steps, cores=4, budget=budget, database=measured).describe()
    )
    assert "unknown size" in " ".join(capacity_plan(steps, cores=4, budget=budget).describe())


def test_the_recommendation_never_goes_below_two_workers() -> None:
    # One worker already fills the machine: two serve as much, and survive a recycle.
    steps = [step(1, 1794, 41, machine_cpu=0.88), step(2, 1715, 41, machine_cpu=0.93),
             step(3, 1741, 44, machine_cpu=0.91)]  # fmt: skip
    chosen, reason = recommend(steps, max_p99_ms=500, max_failure_ratio=0.01)
    assert chosen.workers == 2
    assert reason.startswith("limited by the machine: 93% of 1 CPUs busy")
    assert "run 2 at least" in reason
    # Two workers measured a little slower than one, by the noise: still two.
    steps = [step(1, 1583, 61, machine_cpu=0.9), step(2, 1459, 65, machine_cpu=0.93),
             step(4, 1597, 55, machine_cpu=0.92)]  # fmt: skip
    assert recommend(steps, max_p99_ms=500, max_failure_ratio=0.01)[0].workers == 2
    # With one worker measured alone, it is what there is to say.
    assert recommend([step(1, 900, 40)], 500, 0.01)[0].workers == 1
