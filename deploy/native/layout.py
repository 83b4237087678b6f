"""Where one native stack keeps its runtime files: with `service.runtime.layout` (gunicorn's
own), the only place that spells out the run directory.

The runner, the sweep, the benchmarks and the tests find sockets, pid files, ready markers,
metrics, logs, configs and saved state through `RunLayout`.
"""

from dataclasses import dataclass
from pathlib import Path

from service.runtime.layout import GunicornLayout


@dataclass(frozen=True, slots=True)
class RunLayout(GunicornLayout):
    """Every file of the stack whose run directory is `root` (RUN_DIR): gunicorn's, and those
    of the processes around it."""

    @property
    def reloading_pidfile(self) -> Path:
        """The pid of the master a reload started, while the old one still serves (gunicorn
        names it after its pid file)."""
        return self.gunicorn_pidfile.with_name(self.gunicorn_pidfile.name + ".2")

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

    def daemon_log(self, daemon: str) -> Path:
        """The log of a daemon the runner starts (PgBouncer, Prometheus, the nginx exporter)."""
        return self.logs / f"{daemon}.log"

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
    def tls_dir(self) -> Path:
        """TLS=self-signed: the local CA (ca.pem, for clients to trust) and the certificate."""
        return self.root / "tls"

    @property
    def secrets_dir(self) -> Path:
        """The database roles' passwords and verifiers (deploy.native.secrets), mode 0700."""
        return self.root / "secrets"

    @property
    def pgbouncer_dir(self) -> Path:
        """PgBouncer's rendered config and auth file."""
        return self.root / "pgbouncer"

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
