"""SMS text (segments, composing, ack replies) and phone numbers (E.164, masking)."""

import pytest

from warnd.phone import mask_phone, to_e164
from warnd.smstext import compose_sms, is_ack_reply, sms_segments

# A plausible red rainstorm warning; the description is long on purpose.
WARNING = {
    "level": "red",
    "event": "暴雨",
    "headline": "湖州市气象台发布暴雨红色预警信号",
    "instruction": "立即停止户外活动，低洼地带群众转移到村安置点。",
    "description": "预计未来3小时塘甸村一带降雨量将达100毫米以上，山洪、地质灾害风险极高。" * 8,
}


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


def test_compose_fits_budget_by_shortening_description():
    """A long description is cut (with …) so the whole text fills but fits max_segments."""
    text = compose_sms(**WARNING, ack_required=True, drill=False, max_segments=3)
    assert sms_segments(text)[1] == 3
    assert WARNING["headline"] in text
    assert "应对：" + WARNING["instruction"] in text
    assert text.endswith("\n回复1确认")
    detail = next(line for line in text.splitlines() if line.startswith("详情："))
    assert detail.endswith("…")
    assert WARNING["description"].startswith(detail[len("详情：") : -1])
    assert text.startswith("【warnd】暴雨红色预警\n")


def test_compose_reading_order():
    """Header, headline, what to do, details, reply-1 line: in that order."""
    text = compose_sms(**{**WARNING, "description": "雨大"}, ack_required=True, drill=False,
                       max_segments=10)  # fmt: skip
    assert text.splitlines() == [
        "【warnd】暴雨红色预警",
        WARNING["headline"],
        "应对：" + WARNING["instruction"],
        "详情：雨大",
        "回复1确认",
    ]


def test_compose_shortens_instruction_only_after_description_is_gone():
    """If the instruction alone is too long, the description goes and the instruction is cut."""
    long_instruction = "请网格员逐户敲门通知，确保不漏一户、不落一人，" * 6
    text = compose_sms(**{**WARNING, "instruction": long_instruction}, ack_required=True,
                       drill=True, max_segments=2)  # fmt: skip
    assert sms_segments(text)[1] <= 2
    assert "详情" not in text
    instruction = next(line for line in text.splitlines() if line.startswith("应对："))
    assert instruction.endswith("…")
    assert WARNING["headline"] in text
    assert text.startswith("【warnd】【演练】暴雨红色预警")
    assert text.endswith("回复1确认")


def test_compose_never_cuts_headline():
    """A headline longer than the budget is sent whole: the budget is exceeded, not the warning."""
    headline = "标题" * 100
    text = compose_sms(**{**WARNING, "headline": headline}, ack_required=True, drill=False,
                       max_segments=1)  # fmt: skip
    assert headline in text
    assert "应对" not in text
    assert "详情" not in text
    assert text.endswith("回复1确认")


def test_compose_drill_is_unmistakable():
    """A drill says so before anything else after the sign, and again at the end."""
    drill = compose_sms(**WARNING, ack_required=False, drill=True, max_segments=2)
    assert drill.startswith("【warnd】【演练】")
    assert "非真实预警" in drill
    assert "回复1确认" not in drill
    real = compose_sms(**WARNING, ack_required=False, drill=False, max_segments=2)
    assert "演练" not in real


@pytest.mark.parametrize(
    ("level", "kind", "header"),
    [
        ("red", "warning", "【warnd】暴雨红色预警"),
        ("orange", "warning", "【warnd】暴雨橙色预警"),
        ("yellow", "update", "【warnd】预警更新：暴雨黄色预警"),
        ("blue", "cancel", "【warnd】解除预警：暴雨蓝色预警"),
    ],
)
def test_compose_level_and_kind(level, kind, header):
    """The first line names the kind and the level in Chinese; the headline follows."""
    text = compose_sms(**{**WARNING, "level": level}, kind=kind, ack_required=False,
                       drill=False, max_segments=5)  # fmt: skip
    assert text.splitlines()[:2] == [header, WARNING["headline"]]


def test_compose_rejects_unknown_level():
    """A level outside red/orange/yellow/blue is a caller bug, not something to send."""
    with pytest.raises(ValueError, match="purple"):
        compose_sms(**{**WARNING, "level": "purple"}, ack_required=False, drill=False,
                    max_segments=3)  # fmt: skip


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
