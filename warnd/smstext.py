"""SMS text for a warning: segment counting, composing within a segment budget, ack replies.

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

_LEVELS = {"red": "红色", "orange": "橙色", "yellow": "黄色", "blue": "蓝色"}
_KIND_PREFIX = {"warning": "", "update": "预警更新：", "cancel": "解除预警："}
_DRILL = "【演练】"
_ACK_LINE = "回复1确认"
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


def _header(kind: str, level: str, event: str, drill: bool, sign: str) -> str:
    """Return the first line: sign, drill marker, kind and the level in Chinese."""
    if level not in _LEVELS:
        raise ValueError(f"unknown level {level!r}: expected one of {', '.join(_LEVELS)}")
    if kind not in _KIND_PREFIX:
        raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(_KIND_PREFIX)}")
    drill_mark = _DRILL if drill else ""
    return f"{sign}{drill_mark}{_KIND_PREFIX[kind]}{event.strip()}{_LEVELS[level]}预警"


def _assemble(
    header: str, headline: str, instruction: str, description: str, *, ack: bool, drill: bool
) -> str:
    """Join the non-empty parts, one per line, in reading order."""
    lines = [header, headline.strip()]
    if instruction:
        lines.append(f"应对：{instruction}")
    if description:
        lines.append(f"详情：{description}")
    if drill:
        # Said again at the end: a forwarded or truncated drill must still read as a drill.
        lines.append("（演练信息，非真实预警）")
    if ack:
        lines.append(_ACK_LINE)
    return "\n".join(line for line in lines if line)


def _shortened(text: str, keep: int) -> str:
    """Return the first keep characters of text with an ellipsis, or "" when keep is 0."""
    return f"{text[:keep].rstrip()}{_ELLIPSIS}" if keep > 0 else ""


def _longest_fitting(full: str, fits: Callable[[str], bool]) -> str:
    """Return the longest shortening of full (binary search on length) that fits, or ""."""
    lo, hi = 0, len(full) - 1  # full itself was already tried by the caller
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(_shortened(full, mid)):
            lo = mid
        else:
            hi = mid - 1
    return _shortened(full, lo)


def compose_sms(
    *,
    level: str,
    event: str,
    headline: str,
    description: str,
    instruction: str,
    ack_required: bool,
    drill: bool,
    max_segments: int,
    kind: str = "warning",
    sign: str = "【warnd】",
) -> str:
    """Compose the SMS for a warning, shortening description then instruction to fit max_segments.

    The header (sign, drill marker, level), headline, drill note and reply-1 line are never
    shortened: if they alone exceed max_segments the text is returned longer than asked,
    because a warning that goes out long beats one that does not go out.
    """
    header = _header(kind, level, event, drill, sign)
    instruction, description = instruction.strip(), description.strip()

    def build(instr: str, desc: str) -> str:
        """Assemble with the given instruction and description."""
        return _assemble(header, headline, instr, desc, ack=ack_required, drill=drill)

    def fits(text: str) -> bool:
        """Tell whether text stays within the segment budget."""
        return sms_segments(text)[1] <= max_segments

    text = build(instruction, description)
    if fits(text) or not (instruction or description):
        return text
    if description:
        desc = _longest_fitting(description, lambda d: fits(build(instruction, d)))
        if fits(build(instruction, desc)):
            return build(instruction, desc)
    # Even without a description it is too long: what to do is next to give way.
    if instruction:
        instr = _longest_fitting(instruction, lambda i: fits(build(i, "")))
        return build(instr, "")
    return build("", "")


def is_ack_reply(body: str) -> bool:
    """Tell whether an SMS reply confirms receipt: "1", "１", "收到", "确认", "OK", "1。"…"""
    # NFKC folds full-width digits, letters and punctuation (１, ＯＫ, ！) to ASCII.
    text = unicodedata.normalize("NFKC", body).strip().rstrip(_TRAILING_PUNCT).strip()
    return text.casefold() in _ACK_WORDS
