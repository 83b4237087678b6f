"""`make bench BENCH=stack`: the stack, a variant of it, gunicorn straight and `uvicorn
--workers N` on one database, on a short run; and its table, a column per contender with the
bare server last."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import URL

from loadtest.bench.harness import ROOT, Round
from loadtest.bench.stack import PARTS, markdown, table


def _leftovers() -> set[str]:
    return {
        path.name
        for path in Path(tempfile.gettempdir()).iterdir()
        if path.name.startswith(("bench-stack-", "bench-bare-"))
    }


def test_the_four_contenders_each_serve_and_are_measured(pg_server: URL) -> None:
    assert shutil.which("wrk"), "needs wrk: deploy/native/install-deps wrk"
    before = _leftovers()
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.bench.stack", "--rounds", "1", "--seconds", "1",
         "--warmup-seconds", "0", "--rows", "200", "--direct",
         "--variant", "NGINX_SCHED_POLICY=other"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "DATABASE_URL": pg_server.render_as_string(hide_password=False)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    labels = [
        "stack, 2 workers",
        "stack, NGINX_SCHED_POLICY=other",
        "gunicorn straight, 2 workers",
        "uvicorn --workers 2",
    ]
    # One counted round each (wrk stops the bench on any non-2xx answer or socket error).
    rounds = re.findall(r"^round 1 (.+?) +(\d+) req/s", result.stdout, re.MULTILINE)
    assert sorted(label for label, _ in rounds) == sorted(labels), result.stdout
    assert all(int(rate) > 0 for _, rate in rounds)
    rows = {
        cells[0]: cells[1:]
        for line in result.stdout.splitlines()
        if line.startswith("| ")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert rows["figure"] == labels
    # Each contender's own processes were counted: nginx only in front of the stack.
    assert all(rows["CPU ms/request: workers"]), rows
    assert all(rows["CPU ms/request: nginx"][:2])
    assert not any(rows["CPU ms/request: nginx"][2:])
    assert rows["CPU ms/request: gunicorn master"][3] == ""
    for name in ("read, / bare (median of round ratios)", "read, / bare by CPU per request"):
        assert all(float(ratio) > 0 for ratio in rows[name][:3]), rows[name]
    # Nothing left behind: the three stacks are down and their run directories gone.
    assert _leftovers() == before


def _round(rate: float, workers_cpu: float, nginx_cpu: float | None = None) -> Round:
    cpu = {"workers": workers_cpu, **({"nginx": nginx_cpu} if nginx_cpu else {})}
    return Round(rate, 1000, 10.0, cpu, {"nginx": 2500} if nginx_cpu else {}, 2.0, 1.0)


def test_the_table_gives_each_contender_its_ratio_to_the_bare_server() -> None:
    figures = {
        "uvicorn": [_round(1000, 0.40), _round(2000, 0.40)],
        "stack": [_round(800, 0.40, 0.10), _round(1800, 0.40, 0.10)],
        "straight": [_round(1000, 0.40), _round(1800, 0.40)],
    }
    rows = {row[0]: row[1:] for row in table(figures, "uvicorn")}
    assert rows["figure"] == ("stack", "straight", "uvicorn")
    # Round by round: 0.80 and 0.90 for the stack, 1.00 and 0.90 straight.
    assert rows["read, / bare (median of round ratios)"][:2] == ("0.85", "0.95")
    assert rows["read, / bare by CPU per request"][:2] == ("0.80", "1.00")
    assert rows["CPU ms/request: nginx"] == ("0.100", "", "")
    assert rows["nginx's sleeps per request"] == ("2.50", "", "")
    assert [row[0] for row in table(figures, "uvicorn")][5 : 5 + len(PARTS)] == [
        f"CPU ms/request: {part}" for part in PARTS
    ]
    assert markdown(table(figures, "uvicorn")).splitlines()[:2] == [
        "| figure | stack | straight | uvicorn |",
        "| --- | --- | --- | --- |",
    ]
