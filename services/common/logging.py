"""Structured logging: structlog, one JSON object per line on stdout.

``configure_logging`` sets up structlog and routes the standard library's ``logging`` (grpc, asyncio,
asyncpg) through the same processors, so every line has the same shape: ``ts``, ``level``, ``event``, the
current RPC's ``request_id``, ``method`` and ``user_id`` (:mod:`services.common.context`) and the call's own keys. A
redaction processor replaces the values of sensitive keys (authorization, tokens, passwords, secrets,
addresses, DSNs) with ``"[REDACTED]"``, in nested dicts too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from services.common.context import add_to_log

__all__ = ["REDACTED", "configure_logging", "get_logger", "is_sensitive_key", "redact_sensitive"]

REDACTED: Final = "[REDACTED]"

_SENSITIVE_PARTS: Final = (
    "authorization",
    "token",
    "password",
    "passwd",
    "secret",
    "address",
    "cookie",
    "api_key",
    "apikey",
    "credential",
    "private_key",
    "dsn",
    "database_url",
    "redis_url",
)
_NEVER_REDACTED: Final = frozenset({"event", "level", "ts", "logger", "request_id", "user_id", "method"})
_MAX_DEPTH: Final = 4
_LOGGER_NAME_KEY: Final = "logger_name"


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_verdicts: dict[str, bool] = {}
"""Memo of :func:`is_sensitive_key` (log keys are a small fixed vocabulary; bounded by ``_MAX_VERDICTS``)."""
_MAX_VERDICTS: Final = 4096


def is_sensitive_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    verdict = _verdicts.get(key)
    if verdict is None:
        lowered = key.lower()
        verdict = key not in _NEVER_REDACTED and any(part in lowered for part in _SENSITIVE_PARTS)
        if len(_verdicts) < _MAX_VERDICTS:
            _verdicts[key] = verdict
    return verdict


def _redact(value: Any, depth: int) -> Any:
    if depth >= _MAX_DEPTH or not isinstance(value, Mapping):
        return value
    return {k: (REDACTED if is_sensitive_key(k) else _redact(v, depth + 1)) for k, v in value.items()}


def redact_sensitive(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace values of sensitive keys (see module doc) with ``[REDACTED]``."""
    changed = None
    for key, value in event_dict.items():  # (one pass, no copy: this runs on every log line)
        if is_sensitive_key(key):
            changed = {**(changed or {}), key: REDACTED}
        elif value.__class__ not in _SCALARS and isinstance(value, Mapping):  # (an ABC check is slow: skip it)
            changed = {**(changed or {}), key: _redact(value, 1)}
    if changed:
        event_dict.update(changed)
    return event_dict


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


def configure_logging(
    *,
    level: str | int = "INFO",
    json: bool = True,
    stream: TextIO | None = None,
    cache_loggers: bool = False,
) -> None:
    """Configure structlog and stdlib logging for the process (call once at start-up; tests may call again).

    ``json=False`` renders ``key=value`` lines for humans. ``cache_loggers=True`` is faster in production but
    freezes loggers created before a later reconfiguration, so tests leave it off.
    """
    out = stream if stream is not None else sys.stdout
    number = _level_number(level)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
    shared: list[Processor] = [
        add_to_log,
        structlog.processors.add_log_level,
        timestamper,
        redact_sensitive,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(default=str) if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    tail: list[Processor] = [structlog.processors.format_exc_info] if json else []

    structlog.configure(
        processors=[_rename_logger_name, *shared, structlog.processors.StackInfoRenderer(), *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=cache_loggers,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared[:1],
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            *shared[1:],
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    # Chatty third-party loggers stay at WARNING unless we are debugging.
    for name in ("grpc", "asyncio", "asyncpg"):
        logging.getLogger(name).setLevel(max(number, logging.WARNING) if number > logging.DEBUG else number)


def get_logger(name: str | None = None, **initial: Any) -> FilteringBoundLogger:
    """A structlog logger (``log.info("event", key=value)``); ``name`` becomes the ``logger`` key.

    Lazy: safe to call at import time, before :func:`configure_logging`.
    """
    if name is not None:
        initial[_LOGGER_NAME_KEY] = name
    return cast(FilteringBoundLogger, structlog.get_logger(**initial))


def _rename_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    # structlog.get_logger() reserves the ``logger`` keyword, so get_logger() binds ``logger_name`` instead.
    name = event_dict.pop(_LOGGER_NAME_KEY, None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict
