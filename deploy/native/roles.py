"""What each STACK_ROLE runs on its host: the one table the runner's commands read.

A role is the parts of the stack its host runs, from the database to the front. Everything
the commands do differently per role follows from that, never from the role's name:

- `up` starts each part in that order; an app part with no database part here uses the
  database host's DATABASE_URL, a proxy part with no app part here needs APP_UPSTREAM;
- the front part proves the host serves (`up` waits for it, `status` asks it) and says which
  addresses to print;
- `status` checks every part; `reload` reloads the parts that can be (refusing a host with
  none); `down` stops whatever runs, and expects PgBouncer's port free where the database
  part ran.

A new role is one line of ROLES.
"""

from dataclasses import dataclass
from enum import Enum


class Part(Enum):
    """One part of the stack, as one host runs it."""

    # PostgreSQL (DATABASE_URL or the private cluster), the migrations, PgBouncer.
    DATABASE = "database"
    # gunicorn and its workers.
    APP = "app"
    # nginx, its exporter and Prometheus.
    PROXY = "proxy"


@dataclass(frozen=True)
class HostRole:
    """A host's share of the stack: the parts it runs, from the database to the front."""

    name: str
    parts: tuple[Part, ...]
    # What a host of a partial role runs, in words, for STACK_ROLE's description.
    summary: str = ""

    def runs(self, part: Part) -> bool:
        """Whether this host runs `part`."""
        return part in self.parts

    @property
    def front(self) -> Part:
        """The outermost part: what proves this host serves, and what it offers others."""
        return self.parts[-1]

    @property
    def whole(self) -> bool:
        """Whether this host runs the whole stack (the default, single-host case)."""
        return set(self.parts) == set(Part)


ROLES: dict[str, HostRole] = {
    role.name: role
    for role in (
        HostRole("all", (Part.DATABASE, Part.APP, Part.PROXY)),
        HostRole(
            "database", (Part.DATABASE,), "PgBouncer in front of PostgreSQL, and the migrations"
        ),
        HostRole("app", (Part.APP,), "gunicorn on GUNICORN_BIND"),
        HostRole("proxy", (Part.PROXY,), "nginx to APP_UPSTREAM, and Prometheus"),
    )
}


def known_role(name: str) -> str:
    """`name`, if it names a role; ValueError listing the roles otherwise."""
    if name not in ROLES:
        *others, last = (f"'{role}'" for role in ROLES)
        msg = f"must be {', '.join(others)} or {last}"
        raise ValueError(msg)
    return name


def roles_help() -> str:
    """STACK_ROLE's description: the whole stack, or each partial role and what it runs."""
    whole = next(role.name for role in ROLES.values() if role.whole)
    *others, last = (f"`{role.name}` ({role.summary})" for role in ROLES.values() if not role.whole)
    return (
        f"what `make up` runs on this host: `{whole}` of it; with several hosts, "
        f"{', '.join(others)} or {last}"
    )
