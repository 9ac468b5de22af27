"""Logs: one JSON object per line when stderr is not a terminal (for a collector), readable text when it is.

Every record passes through `Redactor` on its way out: configured secrets (passwords, the password in a URL),
API keys and bearer tokens are replaced by ``***``, and long messages are cut, so that neither a key nor a whole
payload reaches a log file. Each HTTP request gets an id (the client's ``X-Request-ID`` when it sends a sane
one) that is returned in the response and attached to every line logged while the request is handled.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stocktrace.settings import Settings

REQUEST_ID: ContextVar[str | None] = ContextVar("stocktrace_request_id", default=None)
REQUEST_ID_HEADER: Final = "x-request-id"

MAX_MESSAGE_CHARS: Final = 2000
MAX_FIELD_CHARS: Final = 500
MAX_TRACEBACK_CHARS: Final = 8000
_SANE_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Shapes of secrets that may turn up in any message, whatever the configuration.
_SECRET_SHAPES: Final = (
    # API keys (stocktrace/auth.py): keep the public key id, which is what an operator needs to find the key.
    (re.compile(r"\b(stk_[0-9a-f]{12}_)[A-Za-z0-9_-]+"), r"\1***"),
    # user:password@ in any URL (libpq, mqtt, webhooks).
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE), r"\1***@"),
    # Other bearer tokens whole (an API key, already cut to its id above, is left as it is).
    (re.compile(r"\b(bearer\s+)(?!stk_[0-9a-f]{12}_\*\*\*)[^\s,;\"']+", re.IGNORECASE), r"\1***"),
    # password=..., "token": "...", secret: ... as in libpq key/value strings, JSON and YAML.
    (
        re.compile(r"((?:password|passwd|secret|token|api[_-]?key)[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&}]+", re.IGNORECASE),
        r"\1***",
    ),
)

# Attributes every LogRecord has; anything else came in through ``extra=`` and is logged as a field.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "request_id", "taskName"}
)


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


class Redactor(logging.Filter):
    """Replaces secrets by ``***`` and truncates long messages and fields, in place, before formatting."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so that a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        for pattern, replacement in _SECRET_SHAPES:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = truncate(self.redact(_message(record)), MAX_MESSAGE_CHARS)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            # The end of a traceback says what failed; keep that end.
            record.exc_text = self.redact(record.exc_text)[-MAX_TRACEBACK_CHARS:]
        for name, value in _extra_fields(record):
            if isinstance(value, str | bytes):
                setattr(record, name, truncate(self.redact(str(value)), MAX_FIELD_CHARS))
        record.request_id = REQUEST_ID.get()
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):
        # A call whose arguments do not match its format string still deserves a line.
        return f"{record.msg!s} {record.args!r}"


def _extra_fields(record: logging.LogRecord) -> Iterator[tuple[str, Any]]:
    for name, value in vars(record).items():
        if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
            yield name, value


class JsonFormatter(logging.Formatter):
    """One JSON object per record: at, level, logger, message, request_id, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        entry.update(_extra_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  # logging.Formatter's name
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request {request_id}]" if request_id else line


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in the settings: SecretStr fields and passwords inside URLs."""
    found = []
    for value in settings.model_dump().values():
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, str) and "://" in value:
            password = urlsplit(value).password
            if password:
                found.append(password)
    return found


_HANDLER_MARK: Final = "_stocktrace_handler"


def configure_logging(level: str, settings: Settings | None = None, stream: TextIO | None = None) -> None:
    """Send every log line to ``stream`` (stderr): JSON unless it is a terminal, secrets redacted.

    Replaces the handler a previous call installed and any from ``logging.basicConfig``.
    """
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if stream.isatty() else JsonFormatter())
    handler.addFilter(Redactor(secrets_of(settings) if settings is not None else ()))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class RequestLog:
    """ASGI middleware: gives each request an id, returns it as ``X-Request-ID``, logs one line per request.

    The line carries method, path (without the query string, which may hold search terms), status, duration
    and the API key's name; ``stocktrace.access`` at INFO.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("stocktrace.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    "key": scope.get("state", {}).get("key_name"),
                },
            )
            REQUEST_ID.reset(token)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER.encode():
            candidate = str(value.decode("latin-1"))
            if _SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex
