"""Structured logs on top of stdlib ``logging``: one line per event.

``setup_logging(service, level)`` installs one handler on the root logger (replacing the one a
previous call installed) that writes to stderr:

- JSON, one object per line, when stderr is not a TTY (services under a supervisor, the lab)::

    {"ts":"2025-01-02T03:04:05.123456Z","level":"info","service":"datastore",
     "logger":"services.datastore.store","event":"resource created","kind":"IPPool",
     "trace_id":"4bf9...","span_id":"00f0..."}

- ``key=value`` text for a person at a terminal::

    03:04:05.123 INFO  services.datastore.store: resource created kind=IPPool trace_id=4bf9...

``get_logger(name)`` returns a ``StructLogger`` whose ``info(event, **fields)`` puts the fields
beside the event rather than formatting them into it, so lines can be filtered by field. The
current OpenTelemetry span (if any) adds ``trace_id``/``span_id``, which joins a log line to the
trace of the RPC or batch that produced it. Records from other libraries' loggers go through
the same formatter with their message as the event.

Start-up lines written before logging is set up (``load_config`` runs first because the log
level is part of the config) are held by ``log_when_ready`` and written by ``setup_logging``.
"""

from __future__ import annotations

import json as _json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from opentelemetry import trace

from libcalico.errors import ValidationError

__all__ = [
    "StructLogger",
    "get_logger",
    "is_configured",
    "log_when_ready",
    "reset_logging",
    "setup_logging",
]

_FIELDS_ATTR = "calico_fields"
_RESERVED = frozenset({"ts", "level", "service", "logger", "event", "trace_id", "span_id", "exc"})
_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}
_MAX_PENDING = 1000

_service = ""
_handler: logging.Handler | None = None
_pending: list[tuple[str, int, str, dict[str, Any]]] = []


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _span_ids() -> tuple[str, str] | None:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _fields_of(record: logging.LogRecord) -> Mapping[str, Any]:
    fields: Mapping[str, Any] | None = getattr(record, _FIELDS_ATTR, None)
    return fields or {}


def _iso_utc(created: float) -> str:
    secs = int(created)
    micros = int((created - secs) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{micros:06d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; reserved keys first, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname.lower(),
            "service": _service,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in _fields_of(record).items():
            out[f"{key}_" if key in _RESERVED else key] = value
        ids = _span_ids()
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return _json.dumps(out, default=_json_default, ensure_ascii=False, separators=(",", ":"))


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, dict)):
        text = _json.dumps(value, default=_json_default, ensure_ascii=False)
    else:
        text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return _json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL logger: event k=v ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        millis = int((record.created % 1) * 1000)
        parts = [f"{clock}.{millis:03d} {record.levelname:<5} {record.name}: {record.getMessage()}"]
        parts.extend(f"{k}={_text_value(v)}" for k, v in _fields_of(record).items())
        ids = _span_ids()
        if ids is not None:
            parts.append(f"trace_id={ids[0]}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class StructLogger:
    """A stdlib logger that takes an event name plus fields: ``log.info("synced", keys=12)``.

    ``bind(**fields)`` returns a logger that adds those fields to every line (e.g. ``node=``).
    """

    __slots__ = ("_bound", "_logger")

    def __init__(self, logger: logging.Logger, bound: Mapping[str, Any] | None = None) -> None:
        self._logger = logger
        self._bound: dict[str, Any] = dict(bound or {})

    @property
    def name(self) -> str:
        return self._logger.name

    def bind(self, **fields: Any) -> StructLogger:
        return StructLogger(self._logger, {**self._bound, **fields})

    def is_enabled_for(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if not self._logger.isEnabledFor(level):
            return
        if self._bound:
            fields = {**self._bound, **fields}
        self._logger.log(
            level, event, exc_info=exc_info, extra={_FIELDS_ATTR: fields}, stacklevel=3
        )

    def debug(self, event: str, /, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.DEBUG, event, exc_info, fields)

    def info(self, event: str, /, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.INFO, event, exc_info, fields)

    def warning(self, event: str, /, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.WARNING, event, exc_info, fields)

    def error(self, event: str, /, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)

    def exception(self, event: str, /, **fields: Any) -> None:
        """``error`` with the current exception's traceback."""
        self._log(logging.ERROR, event, True, fields)


def get_logger(name: str) -> StructLogger:
    return StructLogger(logging.getLogger(name))


def parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.strip().upper()]
    except KeyError:
        raise ValidationError(
            f"unknown log level {level!r}; expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
            field="log level",
        ) from None


def setup_logging(
    service: str,
    level: str | int = "INFO",
    *,
    json: bool | None = None,
    stream: TextIO | None = None,
) -> None:
    """Send every logger's records to ``stream`` (stderr) as one line each.

    ``json=None`` picks JSON unless the stream is a TTY. Calling again replaces the handler
    this module installed (other handlers, such as pytest's, are left alone).
    """
    global _service, _handler
    numeric = parse_level(level)
    out = stream if stream is not None else sys.stderr
    if json is None:
        isatty = getattr(out, "isatty", None)
        json = not (callable(isatty) and isatty())
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    _service = service
    _handler = handler
    pending = list(_pending)
    _pending.clear()
    for name, lvl, event, fields in pending:
        logging.getLogger(name).log(lvl, event, extra={_FIELDS_ATTR: fields})


def log_when_ready(name: str, level: int, event: str, /, **fields: Any) -> None:
    """Log now if ``setup_logging`` has run, else hold the line until it does."""
    if _handler is not None:
        logging.getLogger(name).log(level, event, extra={_FIELDS_ATTR: fields})
    elif len(_pending) < _MAX_PENDING:
        _pending.append((name, level, event, fields))


def is_configured() -> bool:
    """Whether ``setup_logging`` has installed its handler."""
    return _handler is not None


def reset_logging() -> None:
    """Remove the handler ``setup_logging`` installed and forget held lines (for tests)."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler.close()
        _handler = None
        logging.getLogger().setLevel(logging.WARNING)
    _pending.clear()
