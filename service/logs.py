"""Logs: one JSON object per line (orjson), secrets scrubbed from every line.

Every line has ``ts`` (RFC 3339 UTC, milliseconds), ``level``, ``logger``, ``msg`` and
``pid``; ``extra={...}`` fields of a log call become fields of the line (the access log's
``route``, ``status``, ``request_id``, ...), and an exception becomes ``exc``.

gunicorn's own log goes through the same formatter: :func:`logconfig_dict` is what
``gunicorn.conf.py`` hands to gunicorn. The access log (logger ``jobpool.access``) goes to
stdout, everything else to stderr.

Nothing that looks like a secret reaches a line: ``Bearer`` tokens,
``key=value`` pairs whose key names a secret (``authorization``, ``api_key``, ``token``,
``password``...) and the password of a URL are replaced by ``[REDACTED]`` in the serialised
line, whatever field they are in.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import re
import time
from typing import Any

import orjson

ACCESS_LOGGER = "jobpool.access"
REDACTED = "[REDACTED]"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
# A bearer token wherever it stands: "Bearer abc.def".
_SCHEME = r"(?P<scheme>\bbearer\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/=:-]+"
# key=value or key: value (also quoted, JSON or repr) where the key names a secret; the
# value may start with an auth scheme ("Authorization: Basic dXNlcjpwYXNz").
_PAIR = (
    r"(?P<key>(?<![A-Za-z0-9])(?:authorization|proxy-authorization|x-api-key|api[_-]?keys?"
    r"|apikey|access[_-]?token|refresh[_-]?token|token|secret|client[_-]?secret|password"
    r"|passwd|pwd)\\?[\"']?\s*[:=]\s*\\?[\"']?(?:(?:bearer|basic|digest|negotiate)\s+)?)"
    r"(?!\[REDACTED\])[^\s\"'\\&,;}\])]+"
)
# The password of a URL: scheme://user:password@host
_USERINFO = r"(?P<userinfo>://[^/\s:@\"']*:)[^/\s@\"']+(?=@)"


#: Cheap test before the regular expression: a line holding none of these has no secret
#: of the kinds above (most lines; the full expression costs ~20x more).
_TRIGGERS = ("bearer", "auth", "key", "token", "secret", "pass", "pwd", "://")


class Redactor:
    """Replaces what looks like a secret in a line of text by ``[REDACTED]``."""

    def __init__(self) -> None:
        self._patterns = re.compile(f"{_SCHEME}|{_PAIR}|{_USERINFO}", re.IGNORECASE)

    def __call__(self, text: str) -> str:
        lowered = text.lower()
        for trigger in _TRIGGERS:
            if trigger in lowered:
                return self._patterns.sub(_replace, text)
        return text


def _replace(match: re.Match[str]) -> str:
    prefix = match.group("scheme") or match.group("key") or match.group("userinfo") or ""
    return prefix + REDACTED


#: The redactor every JsonFormatter of the process uses.
redact = Redactor()


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def _iso(ts: float) -> str:
    seconds = int(ts)
    if seconds != _second[0]:
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second[0] = seconds
    return f"{_second[1]}.{int((ts - seconds) * 1000):03d}Z"


class LightRecord(logging.LogRecord):
    """A LogRecord made without LogRecord.__init__'s look-ups (caller's path, thread and
    process names): the access log makes one per request, and those cost more than the
    rest of its line. What it does not set reads the class defaults below, so any
    formatter or filter an operator adds still finds every attribute."""

    pathname = filename = module = ""
    lineno = 0
    funcName = ""
    thread: int | None = None
    threadName: str | None = None
    processName: str | None = None
    taskName: str | None = None
    relativeCreated = 0.0
    exc_info = None
    exc_text: str | None = None
    stack_info: str | None = None

    def __init__(
        self, name: str, level: int, msg: str, args: tuple[Any, ...], fields: dict[str, Any]
    ) -> None:
        self.__dict__.update(fields)
        self.name = name
        self.msg = msg
        self.args = args
        self.levelno = level
        self.levelname = logging.getLevelName(level)
        self.created = created = time.time()
        self.msecs = (created - int(created)) * 1000
        self.process = os.getpid()


def _default(value: Any) -> Any:
    return str(value)


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON, with secrets scrubbed."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or redact

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": _LEVELS.get(record.levelno) or record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if value is not None and key not in _RECORD_ATTRS and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        line = orjson.dumps(doc, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
        return self.redactor(line)


class TickStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the lines of one pass of the event loop together, at the
    end of the pass: the access log writes a line per request, and a write and a flush per
    line cost more than the line itself. Lines from outside the loop (other threads, no
    loop) are written at once, as by a plain StreamHandler."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not the loop's thread: write it now
            self._write([line])
            return
        if not self._pending:
            loop.call_soon(self._write_pending)
        self._pending.append(line)

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        if lines:
            self.acquire()
            try:
                self._write(lines)
            finally:
                self.release()

    def _write(self, lines: list[str]) -> None:
        try:
            self.stream.write("\n".join(lines) + self.terminator)
            self.stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "log write failed"}))

    def flush(self) -> None:
        """Also write what waits for the end of the loop's pass (logging.shutdown)."""
        lines, self._pending = self._pending, []
        if lines:
            self._write(lines)
        super().flush()


def logconfig_dict(level: str) -> dict[str, Any]:
    """``logging.config.dictConfig`` for gunicorn (``logconfig_dict``) and the app: JSON
    lines, the access log on stdout, the rest (gunicorn's error log included) on stderr."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stdout": {
                # The access log: a line per request, written a loop pass at a time.
                "class": f"{__name__}.TickStreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # gunicorn's error log: no handler of its own, the root's JSON one.
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
            # The access log follows JOBPOOL_LOG_LEVEL: its lines are info events.
            ACCESS_LOGGER: {"level": level, "handlers": ["stdout"], "propagate": False},
        },
    }


def configure(level: str) -> None:
    """JSON logs for a process that gunicorn did not set up (another server, a cpu process).

    Leaves a root logger that already has handlers (gunicorn's) as it is, but for its level.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.config.dictConfig(logconfig_dict(level))
    root.setLevel(level.upper())
    logging.captureWarnings(True)
