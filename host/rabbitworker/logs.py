"""Logging set-up: loguru owns the sinks; stdlib ``logging`` (aio-pika, aiormq) is routed in.

Plugins and handlers only ``from loguru import logger``; they never add sinks.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

LOG_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<level>{message}</level>"
)


class InterceptHandler(logging.Handler):
    """Send stdlib ``logging`` records to loguru, keeping their level and origin."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = logging.currentframe(), 2
        while frame and frame.f_code.co_filename == logging.__file__:
            frame = frame.f_back  # type: ignore[assignment]
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def secret_forms(password: str | None) -> tuple[str, ...]:
    """The ways a URL password can show up in a log line: inside a URL (raw or
    percent-encoded) always; bare only when long enough not to mask ordinary words."""
    if not password:
        return ()
    forms = {f":{password}@", f":{quote(password, safe='')}@"}
    if len(password) >= 8:
        forms.add(password)
    return tuple(sorted(forms, key=len, reverse=True))


def setup_logging(level: str = "INFO", secrets: tuple[str, ...] = ()) -> None:
    """Log to stderr at ``level``, with every string in ``secrets`` masked as ``****``."""
    hidden = tuple(secret for secret in secrets if secret)

    def mask(record: Record) -> None:
        for secret in hidden:
            if secret in record["message"]:
                masked = ":****@" if secret.startswith(":") else "****"
                record["message"] = record["message"].replace(secret, masked)

    logger.remove()
    logger.configure(patcher=mask if hidden else None)
    logger.add(
        sys.stderr, level=level, format=LOG_FORMAT, colorize=None, backtrace=False, diagnose=False
    )
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.WARNING, force=True)
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
