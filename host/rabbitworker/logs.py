"""Logging set-up: loguru owns the sinks; stdlib ``logging`` (aio-pika, aiormq) is routed in.

Plugins and handlers only ``from loguru import logger``; they never add sinks.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import orjson
from loguru import logger

from rabbitworker.context import _current

if TYPE_CHECKING:
    from loguru import Message, Record

#: Static formats (loguru compiles them once). ``prefix``/``suffix`` are filled in by the
#: patcher for lines logged inside a handler: ``[queue] ... (task T, message M)``.
#: No trailing ``\n{exception}``: loguru appends it to every string format itself.
LOG_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {extra[prefix]}{message}{extra[suffix]}"
)
COLOR_LOG_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<level>{extra[prefix]}{message}</level><dim>{extra[suffix]}</dim>"
)


def _add_task_context(record: Record) -> None:
    """Inside a handler, every record gets the message's queue, task and id as fields.

    Read from the task context only when a line is actually logged, so messages whose
    handlers log nothing pay nothing for it.
    """
    extra = record["extra"]
    context = _current.get(None)
    if context is None or "prefix" in extra:
        extra.setdefault("prefix", "")
        extra.setdefault("suffix", "")
        return
    extra.setdefault("queue", context.queue)
    extra.setdefault("task", context.task)
    extra.setdefault("message_id", context.message_id)
    if record["message"].startswith("["):
        extra["prefix"] = extra["suffix"] = ""
    else:
        extra["prefix"] = f"[{extra['queue']}] "
        extra["suffix"] = f" (task {extra['task']}, message {extra['message_id']})"


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


def _json_line(message: Message) -> None:
    """One JSON object per line: time, level, message, and every bound field."""
    record = message.record
    data: dict[str, object] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
    }
    data.update((k, v) for k, v in record["extra"].items() if k not in ("prefix", "suffix"))
    if record["exception"] is not None:
        kind, value, _ = record["exception"]
        data["exception"] = f"{kind.__name__ if kind else 'Exception'}: {value}"
    sys.stderr.write(orjson.dumps(data, default=str).decode() + "\n")


class FastLines:
    """The one line every acked message gets, written the cheap way.

    A loguru record costs tens of microseconds (frame, thread, process, time, patcher); at
    thousands of messages a second that is most of the host's CPU. These lines are plain
    data, preformatted in the sink's own text or JSON layout, buffered, and written with
    one ``write`` at the end of each event-loop iteration. Lines the host logs otherwise go
    through loguru as before.
    """

    __slots__ = ("_buffer", "_json", "_offset", "_scheduled", "_second", "_stamp", "min_level")

    def __init__(self, min_level: int, json: bool) -> None:
        self.min_level = min_level
        self._json = json
        self._buffer: list[str] = []
        self._scheduled = False
        self._second = -1
        self._stamp = ""
        self._offset = ""

    def enabled(self, level: int) -> bool:
        return level >= self.min_level

    def _time(self, now: float) -> str:
        """``2026-12-01 11:20:01.123`` (text) or ISO 8601 with the offset (JSON); the
        formatting of the second is done once per second."""
        second = int(now)
        if second != self._second:
            self._second = second
            local = time.localtime(second)
            if self._json:
                offset = time.strftime("%z", local)
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", local)
                self._offset = f"{offset[:3]}:{offset[3:]}"
            else:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", local)
        if self._json:
            return f"{self._stamp}.{int((now - second) * 1_000_000):06d}{self._offset}"
        return f"{self._stamp}.{int((now - second) * 1000):03d}"

    def write(self, level: str, text: str, fields: dict[str, object]) -> None:
        """Queue one line (``level`` is its name, e.g. ``INFO``)."""
        if self._json:
            data: dict[str, object] = {
                "time": self._time(time.time()),
                "level": level,
                "message": text,
                "logger": "rabbitworker.messagelog",
            }
            data.update(fields)
            line = orjson.dumps(data, default=str).decode() + "\n"
        else:
            line = f"{self._time(time.time())} | {level: <8} | {text}\n"
        self._buffer.append(line)
        if not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True

    def flush(self) -> None:
        self._scheduled = False
        if self._buffer:
            lines, self._buffer = self._buffer, []
            sys.stderr.write("".join(lines))


#: The fast path for per-message lines, once :func:`setup_logging` configured the sinks.
fast_lines: FastLines | None = None


def setup_logging(
    level: str = "INFO", secrets: tuple[str, ...] = (), log_format: str = "text"
) -> None:
    """Log to stderr at ``level`` as ``text`` or ``json`` lines, with every string in
    ``secrets`` masked as ``****``."""
    hidden = tuple(secret for secret in secrets if secret)

    def patch(record: Record) -> None:
        _add_task_context(record)
        for secret in hidden:
            if secret in record["message"]:
                masked = ":****@" if secret.startswith(":") else "****"
                record["message"] = record["message"].replace(secret, masked)

    global fast_lines
    logger.remove()
    logger.configure(patcher=patch)
    fast_lines = FastLines(logger.level(level).no, json=log_format == "json")
    if log_format == "json":
        logger.add(_json_line, level=level, backtrace=False, diagnose=False)
    else:
        colorize = sys.stderr.isatty()
        logger.add(
            sys.stderr,
            level=level,
            format=COLOR_LOG_FORMAT if colorize else LOG_FORMAT,
            colorize=colorize,
            backtrace=False,
            diagnose=False,
        )
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.WARNING, force=True)
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # aiormq logs every refused connection attempt and every remote close at ERROR; the
    # host reports those itself, once, with the node and what happens next.
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
