"""One structlog configuration for every process of the stack.

The same processor chain renders structlog's own events and, through `ProcessorFormatter`,
the standard library's records (uvicorn, gunicorn, SQLAlchemy), so every line is alike.
"""

import logging
import logging.config
import os
import sys
from typing import Any

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from service.config import LogFormat, LogLevel


def _add_pid(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["pid"] = os.getpid()
    return event_dict


def _serialize(event_dict: Any, **_: Any) -> str:
    return orjson.dumps(event_dict, default=str).decode()


def _serialize_bytes(event_dict: Any, **_: Any) -> bytes:
    return orjson.dumps(event_dict, default=str)


def _encode(logger: WrappedLogger, method_name: str, rendered: Any) -> bytes:
    return str(rendered).encode()


def shared_processors() -> list[Processor]:
    """Processors applied to every event, structlog's and the standard library's alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_pid,
    ]


def _renderer(log_format: LogFormat) -> Processor:
    if log_format == "console":
        return structlog.dev.ConsoleRenderer()
    return structlog.processors.JSONRenderer(serializer=_serialize)


def logging_config_dict(log_level: LogLevel, log_format: LogFormat) -> dict[str, Any]:
    """A `logging.config.dictConfig` that sends every standard library record through the
    shared chain to stdout; gunicorn takes the same dict as its `logconfig_dict`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": shared_processors(),
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    _renderer(log_format),
                ],
            }
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "structlog",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["stdout"], "level": log_level},
        "loggers": {
            # The app writes one access line per request itself; uvicorn's would duplicate it.
            "uvicorn.access": {"handlers": [], "propagate": False},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn": {"handlers": [], "propagate": True},
            "gunicorn.error": {"handlers": [], "propagate": True},
            "gunicorn.access": {"handlers": [], "propagate": False},
            # Alembic's script loader (used by /readyz's head check) chatters at INFO.
            "alembic": {"level": "WARNING"},
        },
    }


def configure_logging(log_level: LogLevel, log_format: LogFormat) -> None:
    """Configure structlog and the standard library for this process."""
    logging.config.dictConfig(logging_config_dict(log_level, log_format))
    # structlog's own events skip the standard library: rendered once with orjson and written
    # as bytes, a line costs a few microseconds.
    renderer: list[Processor] = (
        [structlog.processors.JSONRenderer(serializer=_serialize_bytes)]
        if log_format == "json"
        else [structlog.dev.ConsoleRenderer(), _encode]
    )
    structlog.configure(
        processors=[*shared_processors(), structlog.processors.format_exc_info, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(log_level)),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
