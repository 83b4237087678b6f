"""Where gunicorn and its workers keep their files in the run directory (RUN_DIR).

gunicorn.conf.py finds its socket, pid file, the workers' ready markers and the multiprocess
metrics through this class, and nothing else spells them. The rest of the run directory
(logs, nginx, PostgreSQL, Prometheus, the runner's state) belongs to the stack around the app:
`deploy.native.layout.RunLayout`, which extends this one.
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class GunicornLayout:
    """The files of the gunicorn master whose run directory is `root` (RUN_DIR)."""

    root: Path

    @property
    def gunicorn_dir(self) -> Path:
        """What gunicorn writes, in a directory of its own: the only one of the run directory
        it may write to when it runs as an unprivileged user (deploy.native.accounts)."""
        return self.root / "gunicorn"

    @property
    def gunicorn_socket(self) -> Path:
        """The unix socket gunicorn listens on and nginx proxies to."""
        return self.gunicorn_dir / "gunicorn.sock"

    @property
    def gunicorn_pidfile(self) -> Path:
        """The serving master's pid; a master started by a reload writes `.2` until it serves."""
        return self.gunicorn_dir / "gunicorn.pid"

    @property
    def ready_dir(self) -> Path:
        """One empty file per worker whose app has started and serves, named by its pid."""
        return self.gunicorn_dir / "ready"

    def ready_marker(self, pid: int) -> Path:
        """The ready marker of worker `pid`."""
        return self.ready_dir / str(pid)

    @property
    def metrics_dir(self) -> Path:
        """PROMETHEUS_MULTIPROC_DIR: every worker's metric files, and the dead ones' archive."""
        return self.gunicorn_dir / "metrics"
