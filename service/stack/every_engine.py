"""A callback for every SQLAlchemy engine this process makes, without the app's help.

SQLAlchemy calls the dialect's `engine_created` hook for every engine `create_engine` (and so
`create_async_engine`) builds, after the engine exists and before its maker gets it. Each
callback is chained before the ones already there. A module of its own, importing nothing
else of the stack: the migrations' runner (`service.stack.alembic_run`) uses it too, and must
not import the workers' metrics.
"""

from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.engine.default import DefaultDialect


def on_every_engine(callback: Callable[[Engine], None]) -> None:
    """From now on, call `callback` with every engine made in this process."""
    previous = DefaultDialect.engine_created

    def engine_created(cls: type[DefaultDialect], engine: Engine) -> None:
        callback(engine)
        previous.__func__(cls, engine)  # type: ignore[attr-defined]

    DefaultDialect.engine_created = classmethod(engine_created)  # type: ignore[assignment,method-assign]
