"""Docker Compose's own settings: read by docker-compose.yml from .env, by no Python process.

Declared here so that docs/settings.md and .env.example list them with the rest.

    python -m deploy.compose.settings [.env]

refuses (exit 1) a .env that says ENVIRONMENT=production and still holds a placeholder secret
(.env.example's `change-me`): `make up ENGINE=docker` (deploy/compose/cli.py) checks it first.
"""

import sys
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values
from sqlalchemy.engine import make_url

from service.config import FromEnvironment, is_placeholder, setting

# What Compose hands on as a password: the database's, Grafana's, and the app's URL.
SECRETS = ("POSTGRES_PASSWORD", "APP_DB_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
URLS = ("DATABASE_URL", "MIGRATION_DATABASE_URL")


class ComposeSettings(FromEnvironment):
    """Docker Compose only: the database's first start and Grafana."""

    postgres_user: str = setting("notes", "the database's owner, made on the first start")
    postgres_password: str = setting(
        "change-me", "its password: replace before the first start", example="change-me"
    )
    postgres_db: str = setting("notes", "the database made on the first start")
    app_db_user: str = setting(
        "notes_app",
        "the role the app logs in as (DATABASE_URL's), made on the first start with only DML "
        "on the app's tables (deploy/postgres/init-app-role.sh)",
    )
    app_db_password: str = setting(
        "change-me", "its password: replace before the first start", example="change-me"
    )
    migration_database_url: str = setting(
        "postgresql+asyncpg://notes:change-me@db:5432/notes",
        "the migrations' DATABASE_URL: the owner (POSTGRES_USER, POSTGRES_PASSWORD), straight "
        "to db",
        example="postgresql+asyncpg://notes:change-me@db:5432/notes",
    )
    grafana_port: int = setting(3000, "Grafana on 127.0.0.1", ge=1, le=65535)
    grafana_admin_user: str = setting("admin", "Grafana's first admin account")
    grafana_admin_password: str = setting(
        "change-me", "its password: replace before the first start", example="change-me"
    )


def placeholders(env: Mapping[str, str | None]) -> list[str]:
    """The settings of `env` (a .env's values) that hold a placeholder secret, when it says
    ENVIRONMENT=production; sorted."""
    if (env.get("ENVIRONMENT") or "").strip() != "production":
        return []
    found = [name for name in SECRETS if is_placeholder(env.get(name))]
    found += [name for name in URLS if is_placeholder(make_url(env.get(name) or "x://").password)]
    return sorted(found)


def refusal(path: Path) -> str | None:
    """Why the .env file at `path` may not start the stack (None: it may)."""
    found = placeholders(dotenv_values(path))
    if not found:
        return None
    names = ", ".join(found)
    return (
        f"{path}: ENVIRONMENT=production with placeholder secrets in {names}: replace each "
        "change-me with a real secret"
    )


def main() -> None:
    """Check the .env file named on the command line (default ./.env)."""
    refused = refusal(Path(sys.argv[1] if len(sys.argv) > 1 else ".env"))
    if refused:
        print(refused, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
