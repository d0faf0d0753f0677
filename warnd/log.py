"""structlog set-up: JSON lines on stdout for journald, phone numbers masked."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

from warnd.phone import mask_phone

# An E.164 number as it appears inside any log value: + and 7–15 digits, not part of a longer
# run of digits. Offsets like +08:00 are too short to match.
_PHONE = re.compile(r"(?<!\d)\+\d{7,15}(?!\d)")


def mask_phones(text: str) -> str:
    """Mask the middle digits of every international phone number in text (+86138****0001).

    The country code is found as warnd.phone.mask_phone finds it (1, 2 or 3 digits).
    """
    return _PHONE.sub(lambda m: mask_phone(m[0]), text)


def _mask_value(value: Any) -> Any:
    """Mask phone numbers in a string, or in the strings inside lists, tuples and dicts."""
    if isinstance(value, str):
        return mask_phones(value) if "+" in value else value
    if isinstance(value, list | tuple):
        return type(value)(_mask_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    return value


def _mask_processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Mask phone numbers in every field: logs leave the machine, the store does not."""
    for key, value in event.items():
        event[key] = _mask_value(value)
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
