"""The scaling lab's gate (loadtest/sweep_gate.py) on figures written down: which sweeps pass,
which fail and why, and the exit status `make sweep CHECK=1` and `python -m
loadtest.sweep_gate` give for each; no stack, nothing that depends on this machine's speed."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.plan import Step
from loadtest.sweep_config import parse_args
from loadtest.sweep_gate import DEFAULT_MIN_SCALING, Check, judge, main, parse_bounds
from loadtest.sweep_report import write_csv
from tests.loadtest.test_sweep_report import RATES, lab, lab_step
from tests.postgres import ROOT


def documented(steps: list[Step], bounds: dict[int, float] = DEFAULT_MIN_SCALING) -> list[Check]:
    """The gate's checks on `steps`, concluded as docs/sweep/lab-0.15 concluded: the knee at
    5.8 workers, the recommendation 8."""
    return judge(steps, bounds=bounds, recommended=8, knee=5.8, knee_workers=8)


def failed(checks: list[Check]) -> list[str]:
    return [check.text for check in checks if not check.held]


def command(*argv: str) -> tuple[int, str]:
    """The gate's command line, in this process: its exit status and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            code: int | str | None = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return int(code or 0), printed.getvalue()


def gate(tmp_path: Path, steps: list[Step], *args: str, **summary: Any) -> tuple[int, str]:
    """Write a sweep's sweep.csv and summary.json, then run the gate's command on them."""
    write_csv(tmp_path / "sweep.csv", steps)
    conclusions = {"recommended_workers": 8, "predicted_knee": 5.8, "knee_workers": 8}
    (tmp_path / "summary.json").write_text(json.dumps(conclusions | summary))
    return command(str(tmp_path), *args)


def test_a_lab_that_scales_passes() -> None:
    checks = documented(lab())
    assert failed(checks) == []
    assert [check.text for check in checks] == [
        "2 workers served 1.93x one (bound 1.8)",
        "4 workers served 3.89x one (bound 3.2)",
        "one worker ran at 100% of its cap (at least 85%)",
        "no failures",
        "the caps predict the knee at 5.8, past 4 workers",
        "the sweep reached the knee: up to 8 workers measured",
        "recommended 8 workers; at the knee: 8",
    ]


def test_each_bound_is_the_multiple_of_one_worker_to_two_decimals() -> None:
    at = {1: 100.0, 2: 180.0, 4: 320.0, 8: 400.0}
    assert failed(documented(lab(at))) == []
    at[2] = 179.4  # 1.794: 1.79 in the report
    assert failed(documented(lab(at))) == ["2 workers served 1.79x one (bound 1.8)"]
    at[4] = 319.0
    assert len(failed(documented(lab(at)))) == 2
    # Other bounds, and more of them.
    assert failed(documented(lab(at), {2: 1.7, 4: 3.1})) == []
    # A bound at 8 workers asks the curve to rise there too: past the knee it cannot.
    assert failed(documented(lab(at), {2: 1.7, 4: 3.1, 8: 4.5})) == [
        "8 workers served 4.00x one (bound 4.5)",
        "the caps predict the knee at 5.8, past 8 workers",
    ]


def test_what_else_makes_the_ratios_meaningless_fails() -> None:
    # One worker below its cap: the ratios measured the offered load, not the workers.
    below = documented(lab(w1={"worker_cpu": 0.8}))
    assert failed(below) == ["one worker ran at 80% of its cap (at least 85%)"]
    failing = documented(lab(w4={"failure_ratio": 0.01}))
    assert failed(failing) == ["requests failed at 4 workers"]


def test_the_recommendation_must_land_at_the_knee_the_caps_predict() -> None:
    steps = lab()
    bounds = DEFAULT_MIN_SCALING
    none = judge(steps, bounds=bounds, recommended=8, knee=None, knee_workers=None)
    assert failed(none) == [
        "the caps predicted no knee: no step at its cap, or the machine's CPU did not grow"
    ]
    early = judge(steps, bounds=bounds, recommended=4, knee=3.9, knee_workers=4)
    assert failed(early) == ["the caps predict the knee at 3.9, past 4 workers"]
    beyond = judge(steps, bounds=bounds, recommended=8, knee=9.0, knee_workers=8)
    assert failed(beyond) == ["the sweep reached the knee: up to 8 workers measured"]
    elsewhere = judge(steps, bounds=bounds, recommended=4, knee=5.8, knee_workers=8)
    assert failed(elsewhere) == ["recommended 4 workers; at the knee: 8"]
    # The knee's count or the next one measured.
    wide = lab({1: 100.0, 2: 195.0, 4: 390.0, 6: 560.0, 8: 600.0})
    assert not failed(judge(wide, bounds=bounds, recommended=8, knee=5.8, knee_workers=6))
    assert failed(judge(wide, bounds=bounds, recommended=4, knee=5.8, knee_workers=6))


def test_the_command_exits_0_when_the_gate_holds_and_1_when_it_does_not(
    tmp_path: Path,
) -> None:
    code, output = gate(tmp_path, lab())
    assert code == 0, output
    assert output.splitlines()[-1] == "gate: passed"
    slow = dict(RATES) | {2: 204.0}  # 1.79 times one
    code, output = gate(tmp_path, lab(slow))
    assert code == 1, output
    assert "gate: FAILED: 2 workers served 1.79x one (bound 1.8)" in output
    assert output.splitlines()[-1] == "gate: 1 check(s) failed"
    code, output = gate(tmp_path, lab(slow), "--min-scaling", "2:1.75 4:3.2")
    assert code == 0, output
    code, output = gate(tmp_path, lab(), recommended_workers=4)
    assert code == 1, output


def test_the_command_refuses_what_it_cannot_judge(tmp_path: Path) -> None:
    uncapped = [lab_step(n, rps, cpu_cap=0.0) for n, rps in RATES.items()]
    code, output = gate(tmp_path, uncapped)
    assert code == 2, output
    assert "CPU_PER_WORKER" in output
    code, output = gate(tmp_path, [s for s in lab() if s.workers != 4])
    assert code == 2, output
    assert "WORKERS must include 4" in output
    code, output = gate(tmp_path, lab(), "--min-scaling", "2")
    assert code == 2, output
    # As a command of its own, too: what `make sweep CHECK=1` and users run.
    nothing = subprocess.run(
        [sys.executable, "-m", "loadtest.sweep_gate", str(tmp_path / "nothing")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert nothing.returncode == 2
    assert "no sweep in" in nothing.stderr


@pytest.mark.parametrize(("sweep", "code"), [("lab-0.15", 0), ("lab", 0), ("uncapped", 2)])
def test_the_committed_sweeps(sweep: str, code: int) -> None:
    """The lab sweeps docs/performance.md shows pass the gate; an uncapped one is refused."""
    status, output = command(str(ROOT / "docs" / "sweep" / sweep))
    assert status == code, output


def test_bounds() -> None:
    assert parse_bounds("2:1.8 4:3.2") == {2: 1.8, 4: 3.2}
    assert parse_bounds(" 8:6 ") == {8: 6.0}
    for wrong in ("", "2", "2:x", "1:1.0", "2:-1", "two:1.8"):
        with pytest.raises(ValueError, match="bound"):
            parse_bounds(wrong)


def test_the_sweep_refuses_a_gate_it_could_not_apply_before_any_load(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["--run-time", "10", "--processes", "2"]
    with pytest.raises(SystemExit) as uncapped:
        parse_args([*base, "--workers", "1 2 4", "--check"])
    assert uncapped.value.code == 2
    assert "CPU_PER_WORKER" in capsys.readouterr().err
    with pytest.raises(SystemExit) as missing:
        parse_args([*base, "--workers", "1 2", "--cpu-per-worker", "0.15", "--check"])
    assert missing.value.code == 2
    assert "WORKERS must include 4" in capsys.readouterr().err
    config = parse_args([*base, "--workers", "1 2", "--cpu-per-worker", "0.15",
                         "--min-scaling", "2:1.9"])  # fmt: skip
    assert config.gate == {2: 1.9}  # a bound implies the gate
    assert parse_args([*base, "--workers", "1 2 4", "--cpu-per-worker", "0.15"]).gate is None
    checked = parse_args([*base, "--workers", "1 2 4 8", "--cpu-per-worker", "0.15", "--check"])
    assert checked.gate == DEFAULT_MIN_SCALING


def test_rounds_go_up_the_counts_and_back_down() -> None:
    config = parse_args(["--workers", "1 2 4", "--rounds", "3", "--processes", "2"])
    assert config.order == [1, 2, 4, 4, 2, 1, 1, 2, 4]
    assert config.users_at(4) == 50  # uncapped: the same users at every step
    lab_config = parse_args(["--workers", "1 2", "--cpu-per-worker", "0.15", "--processes", "2"])
    assert (lab_config.users_at(1), lab_config.users_at(4)) == (10, 40)
