"""Typed settings, read once from the environment and validated at start."""

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, PostgresDsn, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Environment = Literal["development", "test", "production"]

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:55432/notes"


class ConfigurationError(RuntimeError):
    """The environment holds a value the service cannot run with."""


class Settings(BaseSettings):
    """Everything the service reads from its environment.

    Each field is read from the upper-case variable of the same name (`db_pool_size` from
    `DB_POOL_SIZE`). The pool numbers are per worker process: the whole deployment opens up to
    workers x (db_pool_size + db_max_overflow) connections.
    """

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    environment: Environment = "development"
    database_url: PostgresDsn = Field(default=PostgresDsn(DEFAULT_DATABASE_URL))

    db_pool_size: Annotated[int, Field(ge=1, le=1000)] = 5
    db_max_overflow: Annotated[int, Field(ge=0, le=1000)] = 0
    db_pool_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    db_pool_recycle: Annotated[float, Field(ge=-1)] = 1800.0
    db_pool_pre_ping: bool = False
    db_connect_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    db_statement_timeout: Annotated[float, Field(ge=0, le=3600)] = 10.0
    # One budget for a whole request, pool wait and statements together; below nginx's
    # proxy_read_timeout (60 s), so the client always gets the app's 503, never nginx's 504.
    request_timeout: Annotated[float, Field(gt=0, lt=60)] = 10.0

    # How long a POST's Idempotency-Key and its stored outcome are kept for a retry, and how
    # often a worker deletes the expired ones.
    idempotency_key_ttl: Annotated[float, Field(gt=0)] = 86_400.0
    idempotency_cleanup_interval: Annotated[float, Field(gt=0)] = 600.0

    log_level: LogLevel = "INFO"
    log_format: LogFormat = "json"

    @field_validator("database_url")
    @classmethod
    def _asyncpg_driver(cls, url: PostgresDsn) -> PostgresDsn:
        if url.scheme != "postgresql+asyncpg":
            msg = f"must use the asyncpg driver (postgresql+asyncpg://...), got {url.scheme}://"
            raise ValueError(msg)
        return url

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _no_default_database_in_production(self) -> "Settings":
        if self.environment == "production" and str(self.database_url) == DEFAULT_DATABASE_URL:
            msg = "DATABASE_URL must be set explicitly when ENVIRONMENT=production"
            raise ValueError(msg)
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL as SQLAlchemy takes it."""
        return str(self.database_url)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation error into one message naming each variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            value = error.get("input")
            # A database URL may carry a password: name the variable, never echo its value.
            secret = variable.endswith("_URL")
            shown = "" if secret or isinstance(value, dict) else f"={value!r}"
            problems.append(f"{variable}{shown}: {error['msg']}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return load_settings()
