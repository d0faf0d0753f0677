"""SMS text (segments, ack replies) and phone numbers (E.164, masking); composing is in test_messages."""

import pytest

from warnd.phone import mask_phone, to_e164
from warnd.smstext import is_ack_reply, sms_segments


def _fullwidth(text: str) -> str:
    """Return text with ASCII digits and + turned into their full-width forms."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isdigit() or c == "+" else c for c in text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("中" * 70, ("UCS-2", 1)),
        ("中" * 71, ("UCS-2", 2)),
        ("中" * 134, ("UCS-2", 2)),
        ("中" * 135, ("UCS-2", 3)),
        ("a" * 160, ("GSM-7", 1)),
        ("a" * 161, ("GSM-7", 2)),
        ("a" * 306, ("GSM-7", 2)),
        ("a" * 307, ("GSM-7", 3)),
        ("€" * 80, ("GSM-7", 1)),  # extension table: 2 septets each
        ("€" * 81, ("GSM-7", 2)),
        ("a" * 159 + "[", ("GSM-7", 2)),
        # An escape pair is not split across parts: 152 + € does not fit a 153-septet part.
        ("a" * 152 + "€" + "a" * 152, ("GSM-7", 3)),  # 306 septets, yet 3 parts
        ("😀" * 35, ("UCS-2", 1)),  # outside the BMP: two UTF-16 units each
        ("😀" * 36, ("UCS-2", 2)),
        ("中" * 69 + "😀", ("UCS-2", 2)),
        ("Flood warning 中", ("UCS-2", 1)),
        ("", ("GSM-7", 0)),
    ],
)
def test_sms_segments(text, expected):
    """Counts match GSM 03.38 / UCS-2 segmentation, with exact boundaries."""
    assert sms_segments(text) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("1", True),
        ("１", True),
        (" 1\n", True),
        ("1。", True),
        ("收到", True),
        ("收到！", True),
        ("确认", True),
        ("确认。", True),
        ("OK", True),
        ("ok", True),
        ("Ok!", True),
        ("ＯＫ", True),
        ("12", False),
        ("不确认", False),
        ("no", False),
        ("", False),
        ("2", False),
        ("1 收到", False),
    ],
)
def test_is_ack_reply(body, expected):
    """Only confirmations count; anything else (12, 不确认) is not an ack."""
    assert is_ack_reply(body) is expected


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("13800000001", "+8613800000001"),
        ("+86 138-0000-0001", "+8613800000001"),
        ("0086 13800000001", "+8613800000001"),
        ("86-138-0000-0001", "+8613800000001"),
        ("(+86) 138 0000 0001", "+8613800000001"),
        (_fullwidth("13800000001"), "+8613800000001"),
        (_fullwidth("+86 13800000001"), "+8613800000001"),
        ("0572-2123456", "+865722123456"),
        ("+1 415 555 2345", "+14155552345"),
        ("+852 2123 4567", "+85221234567"),
        ("+44 20 7946 0958", "+442079460958"),
    ],
)
def test_to_e164(number, expected):
    """What people type becomes E.164; other countries' E.164 is kept."""
    assert to_e164(number) == expected


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("", "no digits"),
        ("abc", "only digits"),
        ("1380000000a", "only digits"),
        ("138000", "6 digits"),
        ("+86 12345678901", "mobile number has 11 digits"),
        ("+0123456789", "not starting with 0"),
        ("+1234567890123456", "7–15 digits"),
    ],
)
def test_to_e164_rejects_garbage(number, message):
    """Garbage raises ValueError saying what is wrong, without echoing the number."""
    with pytest.raises(ValueError, match=message) as caught:
        to_e164(number)
    if len(number) > 6:
        assert number not in str(caught.value)


@pytest.mark.parametrize(
    ("e164", "masked"),
    [
        ("+8613800000001", "+86138****0001"),
        ("+14155552345", "+141****2345"),
        ("+85221234567", "+852****4567"),
        ("+29012345", "+290***45"),
        ("13800000001", "***01"),
        ("x", "***"),
    ],
)
def test_mask_phone(e164, masked):
    """Country code, up to 3 leading and the last 4 digits stay; at least 4 are hidden."""
    assert mask_phone(e164) == masked
