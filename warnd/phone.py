"""Phone numbers: normalise what people type into E.164, and mask numbers for logs.

Pure functions. Error messages never repeat the number: they end up in logs.
"""

from __future__ import annotations

import re
import unicodedata

# Separators people write inside numbers: spaces (also no-break and ideographic), dashes, dots,
# brackets. Full-width forms are folded to these by NFKC before this runs.
_SEPARATORS = re.compile(r"[\s\-.()\u2010-\u2015]")
# Chinese mobile numbers: 11 digits, 1 then 3–9 (13x … 19x).
_CN_MOBILE = re.compile(r"1[3-9]\d{9}")
# Chinese fixed lines without the trunk 0: area code 10 or 2x (2 digits) or 3 digits, then 7–8.
_CN_FIXED = re.compile(r"(?:10|2\d|[3-9]\d\d)\d{7,8}")
# ITU-T E.164: at most 15 digits including the country code; 7 is the shortest we expect to dial.
_E164 = re.compile(r"[1-9]\d{6,14}")

# Country calling codes of one and two digits (ITU-T E.164 assignments); all others have three.
# Needed only to find where the national number starts when masking.
_CC_1 = {"1", "7"}
_CC_2 = {
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46",
    "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
    "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
}  # fmt: skip


def _digits(number: str) -> tuple[bool, str]:
    """Return whether number was written internationally (+ or 00) and its digits."""
    text = _SEPARATORS.sub("", unicodedata.normalize("NFKC", number))
    plus = text.startswith("+")
    body = text[1:] if plus else text
    if not body:
        raise ValueError("not a phone number: no digits")
    if not body.isdigit() or not body.isascii():
        raise ValueError("not a phone number: only digits, a leading + and separators are allowed")
    if not plus and body.startswith("00"):
        # 00 is the international prefix dialled from China (and most of the world).
        return True, body[2:]
    return plus, body


def _check_cn(national: str) -> str:
    """Return +86 and the national number, or raise if it is neither a mobile nor a fixed line."""
    if _CN_MOBILE.fullmatch(national) or _CN_FIXED.fullmatch(national):
        return f"+86{national}"
    raise ValueError(
        f"not a Chinese phone number: {len(national)} digits after +86; a mobile number has 11 "
        "digits starting 13–19, a fixed line an area code and 7–8 digits"
    )


def to_e164(number: str, default_country: str = "86") -> str:
    """Normalise a phone number as people write it (13800000001, +86 138-…, 0086…) to E.164."""
    international, digits = _digits(number)
    if not international:
        if default_country == "86" and len(digits) == 13 and digits.startswith("86"):
            # "86-138…" written without the plus: no Chinese national number has 13 digits.
            pass
        elif digits.startswith("0"):
            # National trunk prefix (0572-…): the country code replaces it.
            digits = default_country + digits[1:]
        else:
            digits = default_country + digits
    if digits.startswith("86"):
        return _check_cn(digits[2:])
    if not _E164.fullmatch(digits):
        raise ValueError(
            f"not an E.164 phone number: {len(digits)} digits; expected 7–15 digits after +, "
            "not starting with 0"
        )
    return f"+{digits}"


def mask_phone(e164: str) -> str:
    """Mask a phone number for logs: country code, first 3 and last 4 digits (+86138****0001)."""
    if not e164.startswith("+") or not e164[1:].isdigit():
        # Not E.164: show nothing that could identify the number.
        return "***" + e164[-2:] if len(e164) >= 8 else "***"
    digits = e164[1:]
    cc_len = 1 if digits[:1] in _CC_1 else 2 if digits[:2] in _CC_2 else 3
    cc, national = digits[:cc_len], digits[cc_len:]
    # Keep the last 4 (2 of a short number) and up to 3 leading digits, but always hide at
    # least 4: an 8-digit number with 7 shown would not be masked at all.
    tail = 4 if len(national) >= 8 else 2 if len(national) > 2 else 0
    head = max(0, min(3, len(national) - tail - 4))
    hidden = len(national) - head - tail
    return f"+{cc}{national[:head]}{'*' * hidden}{national[len(national) - tail :]}"
