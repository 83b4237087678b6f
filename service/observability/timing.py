"""Server-Timing: handlers add their own entries; the request middleware writes the header."""

from contextvars import ContextVar, Token

_timings: ContextVar[list[str] | None] = ContextVar("server_timings", default=None)


def record_timing(name: str, duration_seconds: float) -> None:
    """Add `name;dur=<ms>` to the current response's Server-Timing header."""
    timings = _timings.get()
    if timings is not None:
        timings.append(f"{name};dur={duration_seconds * 1000:.2f}")


def collect_timings() -> tuple[list[str], Token[list[str] | None]]:
    """Start collecting the current request's entries; reset the token when it ends."""
    timings: list[str] = []
    return timings, _timings.set(timings)


def stop_collecting(token: Token[list[str] | None]) -> None:
    """The request has ended: later entries go nowhere."""
    _timings.reset(token)


def server_timing_header(timings: list[str], app_seconds: float) -> bytes:
    """The header's value: the handlers' entries, then `app;dur=<ms>` for the whole app."""
    return ", ".join([*timings, f"app;dur={app_seconds * 1000:.2f}"]).encode("latin-1")
