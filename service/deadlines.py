"""Deadlines for many tasks at once, kept by one timer: what `asyncio.timeout` does for one.

Every request has a deadline, and so has every wait for a pooled connection. `asyncio.timeout`
arms a timer of its own for each (a handle on the loop's heap, rescheduled and cancelled): with
a busy pool that was 8% of a worker's CPU on a read (py-spy under wrk, docs/performance.md).
Here the tasks under a deadline are kept in a set, and one timer, armed only while the set is
not empty, looks at them every `resolution` seconds and cancels those past theirs. A deadline
then fires up to `resolution` late, which no deadline of seconds notices.

The semantics are `asyncio.timeout`'s: the block's task is cancelled, and the block turns that
cancellation into `TimeoutError`, unless someone else cancelled the task too (then the
`CancelledError` goes on). Blocks nest: an outer deadline that passes while an inner one is
pending is the outer block's `TimeoutError`.
"""

import asyncio
from types import TracebackType


class Deadline:
    """One block's deadline: `with deadlines.after(seconds) as deadline:`."""

    __slots__ = ("_cancelling", "_deadlines", "_loop", "_task", "expired", "expires")

    def __init__(self, deadlines: "Deadlines", seconds: float) -> None:
        self._deadlines = deadlines
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task(self._loop)
        if self._task is None:
            msg = "a deadline needs a running task"
            raise RuntimeError(msg)
        self._cancelling = self._task.cancelling()
        self.expires = self._loop.time() + seconds
        # Whether the deadline passed and the task was cancelled for it.
        self.expired = False

    def __enter__(self) -> "Deadline":
        self._deadlines._watch(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._deadlines._pending.discard(self)
        if not self.expired:
            return
        # Take back this deadline's cancel request, as asyncio.timeout does; only when no
        # other request remains is the cancellation this block's to turn into TimeoutError.
        task = self._task
        assert task is not None  # noqa: S101 (checked when the deadline was made)
        if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _expire(self) -> None:
        self.expired = True
        if self._task is not None:
            self._task.cancel()


class Deadlines:
    """The deadlines of one event loop's tasks, looked at every `resolution` seconds."""

    def __init__(self, resolution: float = 0.05) -> None:
        self.resolution = resolution
        self._pending: set[Deadline] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def after(self, seconds: float) -> Deadline:
        """A deadline `seconds` from now for the current task, to enter with `with`."""
        return Deadline(self, seconds)

    def _watch(self, deadline: Deadline) -> None:
        self._pending.add(deadline)
        loop = deadline._loop
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_at(loop.time() + self.resolution, self._look)

    def _look(self) -> None:
        self._timer = None
        if not self._pending:
            return
        loop = self._loop
        assert loop is not None  # noqa: S101 (armed on it)
        now = loop.time()
        for deadline in [d for d in self._pending if not d.expired and d.expires <= now]:
            deadline._expire()
        self._timer = loop.call_at(now + self.resolution, self._look)
