"""structlog setup: JSON lines for servers (one event per line, `noun.past_verb` names),
pretty console output on a terminal. Processes bind `node_id` once at startup."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(*, json: bool | None = None, level: str | None = None) -> None:
    """Configure structlog for this process. Called once, from a process entry point."""
    level_name = (level or os.environ.get("RAFTMQ_LOG_LEVEL", "INFO")).upper()
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # pysyncobj and grpc log through the standard library; keep them quiet but visible.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
