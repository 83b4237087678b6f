"""The metadata every domain's tables belong to, with explicit constraint names.

Tables are SQLAlchemy Core (`Table`), not ORM classes: the service runs Core statements
compiled to asyncpg's SQL and never loads rows into objects, and a worker that does not
import the ORM is 7 MB smaller (docs/performance.md).
"""

from sqlalchemy import MetaData

# Named constraints make migrations reviewable and let Alembic drop or alter them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# PostgreSQL's bigint, the type of every id and version: a number outside it can name no row,
# and the driver refuses to send it, so inputs are checked against it before any query.
BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1
