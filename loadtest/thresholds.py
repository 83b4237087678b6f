"""What a load test must stay within: shared by the locustfile, which
sets Locust's own exit code from them, and by the reports of `make loadtest` and the sweep.

No Locust import here: importing Locust monkey-patches the whole process with gevent.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """What a run must stay within."""

    max_failure_ratio: float = 0.01
    max_p95_ms: float = 250.0
    max_p99_ms: float = 500.0

    def describe(self) -> str:
        """The thresholds in one line."""
        return (
            f"failures <= {self.max_failure_ratio:.2%}, p95 <= {self.max_p95_ms:g} ms, "
            f"p99 <= {self.max_p99_ms:g} ms"
        )


def violations(
    thresholds: Thresholds, *, requests: int, failures: int, p95_ms: float, p99_ms: float
) -> list[str]:
    """Each threshold a run broke, in words."""
    broken = []
    if requests == 0:
        broken.append("no request completed")
    failure_ratio = failures / requests if requests else 1.0
    if failure_ratio > thresholds.max_failure_ratio:
        broken.append(f"failure ratio {failure_ratio:.2%} > {thresholds.max_failure_ratio:.2%}")
    if p95_ms > thresholds.max_p95_ms:
        broken.append(f"p95 {p95_ms:g} ms > {thresholds.max_p95_ms:g} ms")
    if p99_ms > thresholds.max_p99_ms:
        broken.append(f"p99 {p99_ms:g} ms > {thresholds.max_p99_ms:g} ms")
    return broken
