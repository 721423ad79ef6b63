"""structlog JSON logs; the correlation id rides in contextvars so every line carries it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

_configured = False


def configure_logging(service: str, level: str = "INFO") -> None:
    global _configured
    if _configured:
        return
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level.upper())
    # PyMongo's DEBUG command log prints whole documents (names, national-id hashes, ...):
    # never let a DEBUG service log carry stored data.
    logging.getLogger("pymongo").setLevel(
        max(logging.INFO, logging.getLevelNamesMapping().get(level.upper(), logging.INFO))
    )
    # httpx logs one plain-text INFO line per request: not JSON, and it drowns a load run.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    _configured = True


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


@contextmanager
def correlation(correlation_id: str, **extra: Any) -> Iterator[None]:
    """Bind the correlation id (and extras) for the duration of one unit of work."""
    tokens = structlog.contextvars.bind_contextvars(correlation_id=correlation_id, **extra)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
