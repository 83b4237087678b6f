"""Where one stack keeps its runtime files: the only place that spells out the run directory.

gunicorn.conf.py, the native runner, the sweep and the tests all find sockets, pid files,
ready markers, metrics and logs through this class.
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RunLayout:
    """The files of the stack whose run directory is `root` (RUN_DIR)."""

    root: Path

    @property
    def gunicorn_socket(self) -> Path:
        """The unix socket gunicorn listens on and nginx proxies to."""
        return self.root / "gunicorn.sock"

    @property
    def gunicorn_pidfile(self) -> Path:
        """The serving master's pid; a master started by a reload writes `.2` until it serves."""
        return self.root / "gunicorn.pid"

    @property
    def reloading_pidfile(self) -> Path:
        """The pid of the master a reload started, while the old one still serves."""
        return self.root / "gunicorn.pid.2"

    @property
    def ready_dir(self) -> Path:
        """One empty file per worker whose app has started and serves, named by its pid."""
        return self.root / "gunicorn" / "ready"

    def ready_marker(self, pid: int) -> Path:
        """The ready marker of worker `pid`."""
        return self.ready_dir / str(pid)

    @property
    def metrics_dir(self) -> Path:
        """PROMETHEUS_MULTIPROC_DIR: every worker's metric files, and the dead ones' archive."""
        return self.root / "metrics"

    @property
    def logs(self) -> Path:
        """Every process's log file."""
        return self.root / "logs"

    @property
    def app_log(self) -> Path:
        """The app's, uvicorn's and gunicorn's JSON lines."""
        return self.logs / "app.log"

    @property
    def nginx_access_log(self) -> Path:
        """nginx's JSON access log."""
        return self.logs / "nginx-access.log"

    @property
    def nginx_error_log(self) -> Path:
        """nginx's error log."""
        return self.logs / "nginx-error.log"

    @property
    def nginx_dir(self) -> Path:
        """nginx's rendered config, pid file and temporary files."""
        return self.root / "nginx"

    @property
    def nginx_conf(self) -> Path:
        """nginx.conf with native mode's values filled in."""
        return self.nginx_dir / "nginx.conf"

    @property
    def nginx_pidfile(self) -> Path:
        """The nginx master's pid."""
        return self.nginx_dir / "nginx.pid"

    @property
    def postgres_dir(self) -> Path:
        """The private cluster's data directory."""
        return self.root / "postgres"

    @property
    def prometheus_dir(self) -> Path:
        """Prometheus's config links, scrape targets and data."""
        return self.root / "prometheus"

    @property
    def state_file(self) -> Path:
        """What `up` decided (the database URL), for the commands that come after it."""
        return self.root / "stack.json"

    def pidfile(self, daemon: str) -> Path:
        """The pid file the runner writes for a daemon that writes none itself."""
        return self.root / f"{daemon}.pid"
