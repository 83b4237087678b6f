"""One native stack: where its files are, its settings and role, and what `up` decided for the
commands that come after it (`StackState`, saved as JSON in the run directory)."""

import os
from dataclasses import dataclass
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
    ValidationError,
    model_validator,
)
from sqlalchemy.engine import URL, make_url

from deploy.native.layout import RunLayout
from deploy.native.processes import StackError, fail
from deploy.native.roles import ROLES, HostRole
from deploy.native.secrets import Secrets, write_private
from deploy.native.settings import StackSettings
from service.config import BudgetSettings, Pooler, WorkerSettings, load


class StateFileError(StackError):
    """The saved state is not one this runner can read."""


def _older_boolean(value: object) -> object:
    """An older runner saved every value as a string, its booleans as "1" and ""."""
    return {"1": True, "": False}.get(value, value) if isinstance(value, str) else value


SavedBoolean = Annotated[bool, BeforeValidator(_older_boolean), Strict()]


class StackState(BaseModel):
    """What `up` decided: the database and its two roles, whether it is the private cluster,
    and the pooler in front of it with the URL the workers use instead. Saved as JSON by
    `Stack.save`. The URLs hold no password: the runner adds each role's from
    `.run/secrets/` (deploy.native.secrets) when it hands a URL to a process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Straight to PostgreSQL as the owner: the migrations' URL (their advisory lock needs a
    # session, and only the owner may change the schema).
    database_url: str
    # Straight to PostgreSQL as the app role (DML on the app's tables only), when there is
    # one; else the workers log in as the owner.
    app_url: str | None = None
    # Whether that is the private cluster in the run dir, which `up` restarts and `down` stops.
    private_postgres: SavedBoolean = False
    pooler: Pooler = "none"
    # The URL that reaches the database through the pooler, as the app role, when there is one.
    pooled_url: str | None = None

    @model_validator(mode="after")
    def _pooler_has_its_url(self) -> "StackState":
        if self.pooler != "none" and self.pooled_url is None:
            msg = f"pooler {self.pooler} without its pooled_url"
            raise ValueError(msg)
        return self

    def through(self, pooler: Pooler, pooled_url: str) -> "StackState":
        """The same database, reached by the workers through `pooler` at `pooled_url`."""
        return self.model_copy(update={"pooler": pooler, "pooled_url": pooled_url})

    @property
    def direct_workers_url(self) -> str:
        """The workers' role, straight to PostgreSQL: what a pooler in front logs in with."""
        return self.app_url or self.database_url

    @property
    def workers_url(self) -> str:
        """The URL the workers use: the pooler's, if there is one."""
        if self.pooler == "none" or self.pooled_url is None:
            return self.direct_workers_url
        return self.pooled_url

    def to_json(self) -> str:
        """The state as the file holds it."""
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "StackState":
        """The state `to_json` wrote, or an older runner's; StateFileError saying what is wrong
        otherwise."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            problems = (
                f"{'.'.join(map(str, error['loc'])) or 'the file'}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            raise StateFileError("; ".join(problems)) from None


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
    def role(self) -> HostRole:
        """The parts of the stack this host runs (STACK_ROLE)."""
        return ROLES[self.settings.stack_role]

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

    def saved(self) -> StackState | None:
        """What `up` decided, or None before it has (or after `down`); StateFileError, naming
        the file, if it holds something else."""
        path = self.layout.state_file
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            msg = f"{path}: cannot read the saved state: {exc}"
            raise StateFileError(msg) from None
        try:
            return StackState.from_json(text)
        except StateFileError as exc:
            msg = f"{path} is not a state this runner saved: {exc}. make down, then make up"
            raise StateFileError(msg) from None

    @property
    def secrets(self) -> Secrets:
        """The database roles' passwords."""
        return Secrets(self.layout.secrets_dir)

    def save(self, state: StackState) -> None:
        """Remember what `up` decided (no password in it), replaced whole, so that a reader
        never sees half of it."""
        write_private(self.layout.state_file, state.to_json())

    def kept(self, url: str | URL) -> str:
        """`url` as the state holds it: its password moved to the secrets (`url` undoes it)."""
        parsed = make_url(url) if isinstance(url, str) else url
        return self.secrets.without_password(parsed).render_as_string(hide_password=False)

    def url(self, url: str) -> str:
        """`url` (as the state holds it) with its role's password, for a process to use."""
        with_password = self.secrets.with_password(make_url(url))
        return with_password.render_as_string(hide_password=False)

    def state(self) -> StackState:
        """What `up` decided; fail if it has not run."""
        state = self.saved()
        if state is None:
            fail(f"no saved state in {self.layout.state_file}: make up first")
        return state

    def service_env(self) -> dict[str, str]:
        """The environment gunicorn runs with: through the pooler, if there is one."""
        state = self.state()
        return self._env(state, state.workers_url)

    def migration_env(self) -> dict[str, str]:
        """The environment Alembic runs with: straight to PostgreSQL, whose session advisory
        lock keeps two migrations from racing (a transaction pooler would not hold it)."""
        state = self.state()
        return self._env(state, state.database_url)

    def _env(self, state: StackState, database_url: str) -> dict[str, str]:
        # The app's paths as absolute ones: gunicorn and Alembic run in other directories.
        worker = load(WorkerSettings)
        return {
            **os.environ,
            "RUN_DIR": str(self.layout.root),
            "DATABASE_URL": self.url(database_url),
            "DB_POOLER": state.pooler,
            "APP_PATH": str(worker.app_path.resolve()),
            "MIGRATIONS": str(worker.migrations.resolve()) if worker.migrations else "",
        }

    def app_settings(self) -> BudgetSettings:
        """The settings the workers run with, as the budget check sees them."""
        env = self.service_env()
        return load(BudgetSettings, database_url=env["DATABASE_URL"], db_pooler=env["DB_POOLER"])
