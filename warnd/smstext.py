"""SMS text: segment counting, shortening to fit a segment budget, ack replies.

Pure functions: no I/O, no clock. The counting follows 3GPP TS 23.038 (GSM 7-bit default
alphabet and its extension table) and UCS-2 for everything else, as carriers and Twilio do.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

# GSM 03.38 default alphabet (ESC 0x1B excluded: it only introduces an extension character).
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each costs two septets (ESC + the character).
_GSM_EXTENDED = frozenset("\f^{}\\[~]|€")

# Capacity of one SMS, in septets (GSM-7) or UTF-16 code units (UCS-2). A concatenated
# message loses 7 septets / 3 units per part to the user-data header that glues parts together.
_GSM_SINGLE, _GSM_PART = 160, 153
_UCS2_SINGLE, _UCS2_PART = 70, 67

_ELLIPSIS = "…"

# Replies that confirm receipt (叫应), compared after NFKC folding and casefolding.
_ACK_WORDS = frozenset({"1", "收到", "确认", "ok"})
# Punctuation people add after a short reply; stripped from the end only.
_TRAILING_PUNCT = "。.!！~～,，、;；"


def _char_units(text: str) -> tuple[str, list[int]]:
    """Return the encoding text needs and the cost of each character in that encoding's units."""
    if all(c in _GSM_BASIC or c in _GSM_EXTENDED for c in text):
        return "GSM-7", [2 if c in _GSM_EXTENDED else 1 for c in text]
    # Characters outside the BMP (most emoji) are a UTF-16 surrogate pair: two units.
    return "UCS-2", [2 if ord(c) > 0xFFFF else 1 for c in text]


def sms_segments(text: str) -> tuple[str, int]:
    """Return the encoding ("GSM-7" or "UCS-2") and the number of SMS segments text needs."""
    encoding, units = _char_units(text)
    single, part = (_GSM_SINGLE, _GSM_PART) if encoding == "GSM-7" else (_UCS2_SINGLE, _UCS2_PART)
    total = sum(units)
    if total == 0:
        return encoding, 0
    if total <= single:
        return encoding, 1
    # Pack parts greedily: an escape pair or a surrogate pair is never split across two
    # parts, so a part may carry one unit less than its capacity, as on a real handset.
    segments, used = 1, 0
    for cost in units:
        if used + cost > part:
            segments, used = segments + 1, 0
        used += cost
    return encoding, segments


def _shortened(text: str, keep: int) -> str:
    """Return the first keep characters of text with an ellipsis, or "" when keep is 0."""
    return f"{text[:keep].rstrip()}{_ELLIPSIS}" if keep > 0 else ""


def longest_fitting(full: str, fits: Callable[[str], bool]) -> str:
    """Return the longest shortening of full (binary search on length) that fits, or ""."""
    lo, hi = 0, len(full) - 1  # full itself was already tried by the caller
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(_shortened(full, mid)):
            lo = mid
        else:
            hi = mid - 1
    return _shortened(full, lo)


def is_ack_reply(body: str) -> bool:
    """Tell whether an SMS reply confirms receipt: "1", "１", "收到", "确认", "OK", "1。"…"""
    # NFKC folds full-width digits, letters and punctuation (１, ＯＫ, ！) to ASCII.
    text = unicodedata.normalize("NFKC", body).strip().rstrip(_TRAILING_PUNCT).strip()
    return text.casefold() in _ACK_WORDS
