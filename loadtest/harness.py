"""What every load test of the stack carries, whatever its users: a Locust plugin.

`make loadtest` and `make sweep` load it beside the locustfile (`LOCUSTFILE`, default the
notes scenario): `locust -f loadtest/harness.py,<locustfile>`. It refuses any host but this
machine, prints a `loadtest:` progress line every few seconds (what the runner echoes), adds
`--max-failure-ratio`, `--max-p95-ms` and `--max-p99-ms`, and at the end sets Locust's exit
code to 1 when one of them breaks. A locustfile may also import it (the notes one does, so a
bare `locust -f loadtest/locustfile.py` is judged the same); it registers itself once however
often it is loaded.
"""

import sys
import time
from argparse import ArgumentParser
from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner

from deploy.loopback import loopback_only
from loadtest.thresholds import Thresholds, violations

PROGRESS_SECONDS = 5
# Set on Locust's shared event hooks once the listeners below are on them: loaded by path
# (`-f loadtest/harness.py`) and by import (`loadtest.harness`), this module runs twice.
_REGISTERED = "_stack_harness_registered"


def _threshold_options(parser: ArgumentParser) -> None:
    defaults = Thresholds()
    parser.add_argument(
        "--max-failure-ratio", type=float, default=defaults.max_failure_ratio,
        help="exit 1 if more requests than this share fail",
    )  # fmt: skip
    parser.add_argument(
        "--max-p95-ms", type=float, default=defaults.max_p95_ms,
        help="exit 1 if the 95th percentile is slower",
    )  # fmt: skip
    parser.add_argument(
        "--max-p99-ms", type=float, default=defaults.max_p99_ms,
        help="exit 1 if the 99th percentile is slower",
    )  # fmt: skip


def _guard_and_report(environment: Environment, **_: Any) -> None:
    """Refuse any host but this machine; then, on the process that holds the totals (not a
    worker), print progress while the test runs."""
    try:
        loopback_only(environment.host or "")
    except ValueError as exc:
        sys.exit(f"locustfile: {exc}")
    if not isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_progress, environment)


def _progress(environment: Environment) -> None:
    started = time.monotonic()
    while True:
        gevent.sleep(PROGRESS_SECONDS)
        total = environment.stats.total
        failed = total.num_failures / total.num_requests if total.num_requests else 0.0
        print(
            f"loadtest: {time.monotonic() - started:.0f}s: {total.num_requests} requests, "
            f"{total.current_rps:.0f} req/s, {failed:.2%} failed, "
            f"p95 {total.get_current_response_time_percentile(0.95) or 0:g} ms",
            flush=True,
        )


def _verdict(environment: Environment, **_: Any) -> None:
    """Judge the whole run against the thresholds; a broken one makes Locust exit 1."""
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    options = environment.parsed_options
    thresholds = Thresholds(options.max_failure_ratio, options.max_p95_ms, options.max_p99_ms)
    total = environment.stats.total
    broken = violations(
        thresholds,
        requests=total.num_requests,
        failures=total.num_failures,
        p95_ms=total.get_response_time_percentile(0.95) or 0.0,
        p99_ms=total.get_response_time_percentile(0.99) or 0.0,
    )
    if broken:
        print(f"loadtest: broken: {'; '.join(broken)}", flush=True)
        environment.process_exit_code = 1
    else:
        print(f"loadtest: all thresholds held ({thresholds.describe()})", flush=True)
        environment.process_exit_code = 0


if not getattr(events, _REGISTERED, False):
    events.init_command_line_parser.add_listener(_threshold_options)
    events.init.add_listener(_guard_and_report)
    events.quitting.add_listener(_verdict)
    setattr(events, _REGISTERED, True)
