"""Docker Compose's own settings: read by docker-compose.yml from .env, by no Python process.

Declared here so that docs/settings.md and .env.example list them with the rest.
"""

from service.config import FromEnvironment, setting


class ComposeSettings(FromEnvironment):
    """Docker Compose only: the database's first start and Grafana."""

    postgres_user: str = setting("notes", "the database's owner, made on the first start")
    postgres_password: str = setting(
        "change-me", "its password: replace before the first start", example="change-me"
    )
    postgres_db: str = setting("notes", "the database made on the first start")
    grafana_port: int = setting(3000, "Grafana on 127.0.0.1", ge=1, le=65535)
    grafana_admin_user: str = setting("admin", "Grafana's first admin account")
    grafana_admin_password: str = setting(
        "change-me", "its password: replace before the first start", example="change-me"
    )
