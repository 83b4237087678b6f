"""A database URL as asyncpg takes it, and a name as SQL quotes it: for the code that talks to
PostgreSQL with asyncpg directly (migrations' lock, the runner's roles, the seed, benchmarks)."""

from sqlalchemy.engine import URL, make_url


def asyncpg_dsn(url: str | URL) -> str:
    """`url` (SQLAlchemy's `postgresql+asyncpg://...`) as asyncpg's DSN, password included."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def quoted(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
