"""`make bench BENCH=datasize` loads every endpoint at each size: on small tables, one short
round answers every request of every endpoint with a 2xx, and the gate judges the ratios."""

import shutil
from collections import Counter

import pytest
from sqlalchemy.engine import URL

from loadtest.bench.datasize import ENDPOINTS, Figures, gate, measure_sizes, sized, table
from loadtest.bench.harness import Round


def test_every_endpoint_answers_2xx_at_each_size(
    pg_server: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make test` installs wrk (`make deps`): without it, this fails rather than skips.
    assert shutil.which("wrk"), "needs wrk: deploy/native/install-deps wrk"
    monkeypatch.setenv("DATABASE_URL", pg_server.render_as_string(hide_password=False))
    with sized([100, 300]) as sizes:
        figures = measure_sizes(sizes, rounds=1, seconds=1, warmup_seconds=0)
    rows = table(figures)[2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(ENDPOINTS)
    assert list(figures.statuses) == list(ENDPOINTS)
    for row, (endpoint, statuses) in zip(rows, figures.statuses.items(), strict=True):
        requests = sum(one.requests for runs in figures.rounds[endpoint].values() for one in runs)
        assert requests > 0, endpoint
        # Every answer wrk received was counted, every one a 2xx, and the row says so.
        assert sum(statuses.values()) == requests, (endpoint, statuses)
        assert all(200 <= status < 300 for status in statuses), (endpoint, statuses)
        assert row.endswith(f" | {', '.join(f'{s}: {n:,}' for s, n in sorted(statuses.items()))} |")


def _figures(small: float, large: float) -> Figures:
    figures = Figures([10, 1000])
    for size, rate in ((10, small), (1000, large)):
        one = Round(rate, 100, 5.0, {}, {}, 1.0, 1.0)
        figures.add("GET /notes/{id}", size, one, Counter({200: 100}))
    return figures


def test_the_gate_fails_an_endpoint_below_two_thirds_of_its_throughput() -> None:
    assert gate(_figures(1000, 670))[0].startswith("gate: ok: GET /notes/{id} keeps 0.67")
    assert gate(_figures(1000, 660))[0].startswith("gate: FAILED: GET /notes/{id} keeps 0.66")
