"""The settings of the app and of gunicorn's master, declared once: typed, with the default
and the reason for each.

`Settings` is what the app reads in each worker, `BudgetSettings` what the connection budget
check adds to it (in gunicorn's master and the runner, never in a worker), `GunicornSettings`
what gunicorn.conf.py reads in the master. The stack around the app declares its own the same
way, with `setting()` on a `FromEnvironment` class: the native runner's in
`deploy/native/settings.py`, Compose's in `deploy/compose/settings.py`. Each field comes from
the upper-case environment variable of its name (`db_pool_size` from `DB_POOL_SIZE`).
`docs/settings.md` and `.env.example` are generated from every declaration
(`python -m deploy.settings_docs`), never written by hand.
"""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BeforeValidator,
    Field,
    PostgresDsn,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic_settings import BaseSettings, SettingsConfigDict

LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Environment = Literal["development", "test", "production"]
Pooler = Literal["none", "pgbouncer"]


def unset_if_empty(value: object) -> object:
    """An empty value (`NAME=` in .env) is the setting left unset."""
    return None if value == "" else value


# An optional setting that `NAME=` leaves unset.
Unset = BeforeValidator(unset_if_empty)

ROOT = Path(__file__).resolve().parent.parent
# The passwords examples and defaults ship with (.env.example's `change-me` among them): never a
# production secret, so ENVIRONMENT=production refuses them wherever the stack reads one.
PLACEHOLDER_SECRETS = frozenset(
    {"change-me", "changeme", "password", "secret", "postgres", "admin"}
)


def is_placeholder(secret: str | None) -> bool:
    """Whether `secret` is one of the passwords examples ship with (case aside)."""
    return secret is not None and secret.strip().lower() in PLACEHOLDER_SECRETS


DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:55432/notes"


def setting(
    default: Any,
    why: str,
    *,
    example: str | None = None,
    per_deployment: bool = True,
    **limits: Any,
) -> Any:
    """A field with its one-line reason. `.env.example` lists it with `example` (else its
    default) unless it is not `per_deployment`: set by the image or the runner instead."""
    extra: JsonDict = {"per_deployment": per_deployment, "env_example": example}
    return Field(default, description=why, json_schema_extra=extra, **limits)


class ConfigurationError(RuntimeError):
    """The environment holds a value the stack cannot run with."""


class FromEnvironment(BaseSettings):
    """Settings read from the environment once, then frozen; unknown variables are ignored."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)


class WorkerSettings(FromEnvironment):
    """The stack around the app, in every worker: which app it serves and how it wraps it.

    Read by `service.stack.asgi`, whatever app `APP` names; the notes service's own settings
    (`Settings`) extend these.
    """

    app: str = setting(
        "service.main:create_app()",
        "the ASGI app the workers serve, in gunicorn's syntax: `pkg.module:app` or "
        "`pkg.module:create_app()`; the default is the notes service",
        example="service.main:create_app()",
    )
    stack_name: str = setting(
        "notes",
        "this deployment's name: the private cluster's database (with `_` for `-`), the "
        "Prometheus job, the lab's cgroups and each worker's `application_name` "
        "(`<name>:<pid>`) in pg_stat_activity",
        pattern=r"^[a-z][a-z0-9-]{0,39}$",
    )
    app_path: Path = setting(
        ROOT,
        "a directory put first on the import path, where `APP`'s package is found",
        example=".",
    )
    migrations: Annotated[Path | None, Unset] = setting(
        ROOT / "alembic.ini",
        "the app's alembic.ini: `make up` and `make migrate` run it under the stack's advisory "
        "lock, and /readyz asks for its head revisions; empty: no migrations, no schema check",
        example="alembic.ini",
    )
    ready_check: Annotated[str | None, Unset] = setting(
        None,
        "`pkg.module:callable`, an async function /readyz awaits after its own checks: ready "
        "when it returns, 503 with its message when it raises",
        example="",
    )
    ready_timeout: float = setting(
        5.0,
        "seconds /readyz waits for its checks (each engine's connection, the schema, "
        "READY_CHECK) before answering 503",
        gt=0,
        le=60,
    )
    db_pooler: Pooler = setting(
        "none",
        "what DATABASE_URL reaches: behind `pgbouncer` (transaction mode, before 1.21) every "
        "asyncpg engine of the app keeps no prepared statements, which another client's server "
        "connection would lack; `none` prepares each statement once per connection",
    )
    environment: Environment = setting(
        "development",
        "`production` hides /docs and refuses the built-in development DATABASE_URL",
        example="production",
    )
    request_timeout: float = setting(
        10.0,
        "seconds a whole request may take, pool wait and statements together, before it is "
        "cancelled and answered 503; below nginx's proxy_read_timeout (60 s)",
        gt=0,
        lt=60,
    )
    access_log: bool = setting(
        True, "one JSON line per request from the app (nginx keeps its own access log)"
    )
    request_metrics: bool = setting(
        True, "http_requests_total, durations and in-progress per route and status"
    )
    log_level: LogLevel = setting("INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL")
    log_format: LogFormat = setting(
        "json", "`json` (one object per line) or `console` (coloured, for a person)"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Settings(WorkerSettings):
    """The notes service, in every worker process.

    The pool numbers are per worker: the whole deployment opens up to
    workers x (db_pool_size + db_max_overflow) connections.
    """

    database_url: PostgresDsn = setting(
        PostgresDsn(DEFAULT_DATABASE_URL),
        "must use the asyncpg driver; the default is `make up`'s private cluster",
        example="postgresql+asyncpg://notes_app:change-me@db:5432/notes",
    )
    db_pool_size: int = setting(5, "connections each worker keeps open", ge=1, le=1000)
    db_max_overflow: int = setting(
        0,
        "extra connections a worker may open in a burst; closed when returned, so under "
        "steady load they churn: raise the pool size instead",
        ge=0,
        le=1000,
    )
    db_pool_timeout: float = setting(
        10.0, "seconds a request waits for a connection before 503", gt=0, le=300
    )
    db_pool_recycle: float = setting(
        1800.0, "seconds after which a connection is replaced (-1: never)", ge=-1
    )
    db_pool_pre_ping: bool = setting(
        False,
        "test each connection on checkout (a round trip per request); a connection lost to a "
        "database restart already invalidates the pool on first use",
    )
    db_connect_timeout: float = setting(
        5.0, "seconds to open a connection; also bounds /readyz", gt=0, le=300
    )
    db_statement_timeout: float = setting(
        10.0,
        "seconds any statement may run (PostgreSQL statement_timeout; 0: no limit): the "
        "server's own backstop beside REQUEST_TIMEOUT",
        ge=0,
        le=3600,
    )
    idempotency_key_ttl: float = setting(
        86_400.0, "seconds a write's Idempotency-Key and its response are kept for retries", gt=0
    )
    idempotency_cleanup_interval: float = setting(
        600.0, "seconds between a worker's deletions of expired keys (jittered by ±50%)", gt=0
    )

    @field_validator("database_url")
    @classmethod
    def _asyncpg_driver(cls, url: PostgresDsn) -> PostgresDsn:
        if url.scheme != "postgresql+asyncpg":
            msg = f"must use the asyncpg driver (postgresql+asyncpg://...), got {url.scheme}://"
            raise ValueError(msg)
        return url

    @model_validator(mode="after")
    def _no_default_database_in_production(self) -> "Settings":
        if self.environment != "production":
            return self
        if str(self.database_url) == DEFAULT_DATABASE_URL:
            msg = "DATABASE_URL must be set explicitly when ENVIRONMENT=production"
            raise ValueError(msg)
        if is_placeholder(self.database_url.hosts()[0].get("password")):
            msg = (
                "DATABASE_URL's password is a placeholder (as in .env.example): set a real one "
                "when ENVIRONMENT=production"
            )
            raise ValueError(msg)
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL as SQLAlchemy takes it."""
        return str(self.database_url)

    @property
    def database_url_is_explicit(self) -> bool:
        """Whether DATABASE_URL was set, rather than left to the private cluster's default."""
        return "database_url" in self.model_fields_set


class BudgetSettings(Settings):
    """The connection budget: the app's pools across hosts, and PgBouncer's sizes.

    Read with the app's settings by the budget check in gunicorn's master, `make scale` and
    `make reload`, and by the runner's PgBouncer; never by a worker.
    """

    app_hosts: int = setting(
        1,
        "hosts (or pods) that each run this many workers against the same database or "
        "pooler: the connection budget counts the workers of all of them",
        ge=1,
        le=10_000,
    )
    pgbouncer_max_client_conn: int = setting(
        500,
        "with DB_POOLER=pgbouncer: the client connections PgBouncer accepts, which the "
        "workers' pools of every host must fit",
        ge=1,
        le=100_000,
    )
    pgbouncer_pool_size: int = setting(
        20,
        "with DB_POOLER=pgbouncer: PgBouncer's connections to PostgreSQL, which every client "
        "shares; they must fit max_connections",
        ge=1,
        le=10_000,
    )


class RunDirSettings(FromEnvironment):
    """The run directory, read by gunicorn and the native runner.

    gunicorn's files in it are laid out by `service.runtime.layout`, the rest by
    `deploy.native.layout`.
    """

    run_dir: Path = setting(
        ROOT / ".run",
        "sockets, pid files, logs, metrics and the private cluster of one stack; the tests "
        "run whole stacks side by side in their own",
        per_deployment=False,
    )


class GunicornSettings(RunDirSettings):
    """gunicorn, in the master (gunicorn.conf.py)."""

    web_concurrency: int | None = setting(
        None,
        "worker processes; unset: one per usable CPU (affinity and cgroup quota), at least 2, "
        "so a recycling worker never leaves the socket without an acceptor",
        example="4",
        ge=1,
    )
    gunicorn_bind: str | None = setting(
        None,
        "unset: a unix socket in RUN_DIR, which only nginx on this host reaches; the image "
        "binds 0.0.0.0:8000",
        per_deployment=False,
    )
    forwarded_allow_ips: str | None = setting(
        None,
        "whose X-Forwarded-For to trust; unset: `*` on a unix socket (its peer has no address, "
        "and only nginx reaches it), else 127.0.0.1",
        per_deployment=False,
    )
    log_file: Path | None = setting(
        None,
        "the file gunicorn and its workers write their log lines to instead of stdout, "
        "reopened by each on SIGUSR1 (log rotation); `make up` sets it to .run/logs/app.log",
        per_deployment=False,
    )
    gunicorn_keepalive: int = setting(
        75,
        "seconds an idle connection stays open; above nginx's upstream keepalive_timeout "
        "(5 s), so nginx always closes first and never writes into a closing connection",
        ge=1,
    )
    gunicorn_graceful_timeout: int = setting(
        30,
        "seconds a stopping worker has to finish its requests; keep it below the container's "
        "stop_grace_period (35 s)",
        ge=1,
    )
    gunicorn_timeout: int = setting(
        60, "seconds without a heartbeat before a stuck worker is killed and replaced", ge=1
    )
    gunicorn_max_requests: int = setting(
        200_000,
        "requests after which a worker is recycled, to bound slow leaks; at 20,000 a one-worker "
        "stack at ~1,000 req/s stalled every 20 s (a worker takes a second to start)",
        ge=0,
    )
    gunicorn_max_requests_jitter: int = setting(
        20_000, "random extra requests, so that workers do not recycle together", ge=0
    )


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load(cls: type[SettingsT], **overrides: object) -> SettingsT:
    """Read `cls` from the environment, turning a validation error into one message naming
    each variable (and never echoing a URL, which may hold a password)."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            value = error.get("input")
            secret = variable.endswith(("_URL", "_PASSWORD"))
            shown = "" if secret or isinstance(value, dict) else f"={value!r}"
            problems.append(f"{variable}{shown}: {error['msg']}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None


def load_settings(**overrides: object) -> Settings:
    """The app's settings, with `overrides` taking the place of environment variables."""
    return load(Settings, **overrides)


@lru_cache
def get_settings() -> Settings:
    """The process-wide app settings, read on first use."""
    return load_settings()
