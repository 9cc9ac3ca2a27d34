"""Where log lines go and how they look: ``--log`` picks the level, ``LOG_FORMAT`` the
shape: ``text`` for people, ``json`` (one object per line) for a log pipeline."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from types import TracebackType

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601 with
    milliseconds), ``level``, ``logger``, ``message``, and ``exception`` (the traceback's
    text) or ``stack`` when the record carries one. Newlines inside stay escaped, so a
    traceback never breaks a line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


_json_lines = [False]


def json_lines(on: bool) -> None:
    """Whether :func:`shaped` writes JSON (``LOG_FORMAT=json``; set even when the rest of
    the configuration could not be read, so that its error is JSON too)."""
    _json_lines[0] = on


def shaped(message: str, level: int = logging.ERROR) -> str:
    """A line the command writes itself (its result or its error), shaped like the log."""
    if not _json_lines[0]:
        return message
    record = logging.LogRecord("natsgate", level, "", 0, message, None, None)
    return JsonFormatter().format(record)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    json_lines(fmt == "json")
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        logging.captureWarnings(True)  # Python's warnings would be plain lines on stderr

        def uncaught(
            kind: type[BaseException], exc: BaseException, tb: TracebackType | None
        ) -> None:
            logging.getLogger("natsgate").critical("uncaught exception", exc_info=(kind, exc, tb))

        sys.excepthook = uncaught
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=LEVELS[level], handlers=[handler], force=True)
    if level != "debug":  # nats-py is chatty about reconnects we already report
        logging.getLogger("nats").setLevel(logging.CRITICAL)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
