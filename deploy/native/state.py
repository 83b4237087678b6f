"""One native stack: where its files are, its ports, and what `up` decided for the rest."""

import json
import os
from dataclasses import dataclass

from deploy.native.layout import RunLayout
from deploy.native.settings import StackSettings
from service.config import BudgetSettings, load


@dataclass(frozen=True)
class Stack:
    """The stack that RUN_DIR and the ports in the environment name."""

    layout: RunLayout
    settings: StackSettings

    @classmethod
    def from_environment(cls) -> "Stack":
        """The stack the environment asks for."""
        settings = load(StackSettings)
        return cls(RunLayout(settings.run_dir.resolve()), settings)

    @property
    def public_url(self) -> str:
        """nginx's public server."""
        return f"http://{self.settings.listen_address}:{self.settings.http_port}"

    @property
    def ops_url(self) -> str:
        """nginx's ops server."""
        return f"http://127.0.0.1:{self.settings.ops_port}"

    @property
    def prometheus_url(self) -> str:
        """Prometheus."""
        return f"http://127.0.0.1:{self.settings.prometheus_port}"

    def saved(self) -> dict[str, str]:
        """What `up` decided: the database URL, whether the cluster is the private one, and
        the pooler in front of it with the URL the workers use instead."""
        try:
            state: dict[str, str] = json.loads(self.layout.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state

    def save(self, state: dict[str, str]) -> None:
        """Remember what `up` decided."""
        self.layout.state_file.write_text(json.dumps(state))

    def service_env(self) -> dict[str, str]:
        """The environment gunicorn runs with: through the pooler, if there is one."""
        return self._env(pooled=True)

    def migration_env(self) -> dict[str, str]:
        """The environment Alembic runs with: straight to PostgreSQL, whose session advisory
        lock keeps two migrations from racing (a transaction pooler would not hold it)."""
        return self._env(pooled=False)

    def _env(self, *, pooled: bool) -> dict[str, str]:
        state = self.saved()
        pooler = state.get("pooler") or "none"
        through_pooler = pooled and pooler != "none"
        return {
            **os.environ,
            "RUN_DIR": str(self.layout.root),
            "DATABASE_URL": state["pooled_url" if through_pooler else "database_url"],
            "DB_POOLER": pooler,
        }

    def app_settings(self) -> BudgetSettings:
        """The settings the workers run with, as the budget check sees them."""
        env = self.service_env()
        return load(BudgetSettings, database_url=env["DATABASE_URL"], db_pooler=env["DB_POOLER"])
