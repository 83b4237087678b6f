"""SQLAlchemy Core statements compiled once, at import, to the SQL asyncpg runs.

The tables and statements stay typed Python (columns, not strings); what runs per request is
asyncpg with its prepared-statement cache, with no compilation and no result processing.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Query:
    """One statement's SQL (`$1`, `$2`, ...) and the names of its parameters, in order."""

    sql: str
    parameters: tuple[str, ...]

    def arguments(self, **values: Any) -> list[Any]:
        """The values in the order the SQL takes them."""
        return [values[name] for name in self.parameters]


def compiled(statement: Executable) -> Query:
    """`statement` as asyncpg's SQL; its bound parameters must be named `bindparam`s."""
    assert isinstance(statement, ClauseElement)  # noqa: S101 (Core statements only)
    result = statement.compile(dialect=_DIALECT)
    assert isinstance(result, SQLCompiler)  # noqa: S101 (statements compile with SQLCompiler)
    return Query(result.string, tuple(result.positiontup or ()))
