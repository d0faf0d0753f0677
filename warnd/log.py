"""structlog set-up: JSON lines on stdout for journald, phone numbers masked."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

# An E.164 number as it appears inside any log value: +, country code, 6–14 more digits.
_PHONE = re.compile(r"\+(\d{2})(\d{3})(\d{2,9})(\d{4})")


def mask_phones(text: str) -> str:
    """Mask the middle digits of every international phone number in text (+86138****0001)."""
    return _PHONE.sub(lambda m: f"+{m[1]}{m[2]}****{m[4]}", text)


def _mask_processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Mask phone numbers in every string field: logs leave the machine, the store does not."""
    for key, value in event.items():
        if isinstance(value, str) and "+" in value:
            event[key] = mask_phones(value)
    return event


def configure(level: str = "info", *, mask: bool = True, stream: Any = None) -> None:
    """Send structlog events as JSON lines to stdout (or stream)."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if mask:
        processors.append(_mask_processor)
    processors.append(structlog.processors.JSONRenderer(ensure_ascii=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
