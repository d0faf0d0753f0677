"""Message templates: every kind reads right on every channel, SMS fits its budget, drills are marked."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import test_settings as make_settings
from tests.support.phonemes import assert_mandarin, needs_espeak
from warnd import messages
from warnd.config import ConfigError, load_settings
from warnd.directory import Directory
from warnd.smstext import sms_segments
from warnd.speech import spoken_text

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 6, 30, 19, 12, tzinfo=UTC)  # 7月1日03:12 in Beijing
INSTRUCTION = "立即撤离到安置点"
WARNING: dict[str, Any] = {
    "id": "W1",
    "event": "暴雨",
    "level": "red",
    "status": "actual",
    "headline": "湖州市气象台发布暴雨红色预警信号",
    "instruction": INSTRUCTION,
    "description": "预计未来3小时塘甸村一带降雨量将达100毫米以上，山洪、地质灾害风险极高。" * 8,
    "villages": [],
    "onset": "2026-07-01T08:00:00+08:00",
    "expires": "2026-07-02T08:00:00+08:00",
}


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    """Test settings with a registered signature."""
    s = make_settings(tmp_path, tmp_path)
    return s.model_copy(update={"sms": s.sms.model_copy(update={"signature": "塘甸镇应急办"})})


@pytest.fixture(scope="module")
def directory() -> Directory:
    """The example county's directory."""
    return Directory.load(REPO / "config" / "directory.toml")


def sms(kind: str, settings: Any, *, ack: bool = True, max_segments: int = 3, **over: Any) -> str:
    """One kind's SMS for WARNING (with overrides), as the SMS channel sends it."""
    context = over.pop("context", {})
    values = messages.values_for({**WARNING, **over}, kind, context, settings=settings, directory=None,
                                 channel="sms")  # fmt: skip
    return messages.compose_sms(kind, values, settings.messages, signature=settings.sms.signature, ack=ack,
                                max_segments=max_segments)  # fmt: skip


def test_sms_fits_budget_by_shortening_description(settings: Any) -> None:
    """A long description is cut (with …) so the whole text fills but fits max_segments."""
    text = sms("issue", settings)
    assert sms_segments(text)[1] == 3
    assert text.startswith("【塘甸镇应急办】暴雨红色预警\n")
    assert WARNING["headline"] in text
    assert "应对：" + INSTRUCTION in text
    assert text.endswith("\n回复1确认")
    detail = next(line for line in text.splitlines() if line.startswith("详情："))
    assert detail.endswith("…")
    assert WARNING["description"].startswith(detail[len("详情：") : -1])


def test_sms_reading_order(settings: Any) -> None:
    """Signature and title, headline, when, what to do, details, reply-1 line: in that order."""
    text = sms("issue", settings, description="雨大", max_segments=10)
    assert text.splitlines() == [
        "【塘甸镇应急办】暴雨红色预警",
        WARNING["headline"],
        "预计开始：7月1日08:00",
        "应对：" + INSTRUCTION,
        "详情：雨大",
        "回复1确认",
    ]


def test_sms_shortens_instruction_only_after_description_is_gone(settings: Any) -> None:
    """If the instruction alone is too long, the description goes and the instruction is cut."""
    long_instruction = "请网格员逐户敲门通知，确保不漏一户、不落一人，" * 6
    text = sms("issue", settings, instruction=long_instruction, status="exercise", max_segments=2)
    assert sms_segments(text)[1] <= 2
    assert "详情" not in text
    instruction = next(line for line in text.splitlines() if line.startswith("应对："))
    assert instruction.endswith("…")
    assert WARNING["headline"] in text
    assert text.startswith("【塘甸镇应急办】【演练】暴雨红色预警")
    assert text.endswith("回复1确认")


def test_sms_never_cuts_headline(settings: Any) -> None:
    """A headline longer than the budget is sent whole: the budget is exceeded, not the warning."""
    headline = "标题" * 100
    text = sms("issue", settings, headline=headline, max_segments=1)
    assert headline in text
    assert "应对" not in text
    assert "详情" not in text
    assert text.endswith("回复1确认")


def test_drill_is_unmistakable_in_every_kind_and_form(settings: Any) -> None:
    """A drill says so first and again at the end, in every kind, written and spoken."""
    drill = {**WARNING, "status": "exercise"}
    for kind in messages.KINDS:
        values = messages.values_for(drill, kind, {"old_level": "orange"}, settings=settings,
                                     directory=None, channel="loudspeaker")  # fmt: skip
        r = messages.render(kind, values, settings.messages)
        assert r.title.startswith("【演练】"), kind
        assert r.text.endswith("（演练信息，非真实预警）"), kind
        assert r.speech.startswith("演练，演练。") and r.speech.endswith("演练，演练。"), kind
    real = sms("issue", settings, ack=False, max_segments=5)
    assert "演练" not in real


def test_drill_mark_kept_even_when_a_template_leaves_it_out(tmp_path: Path) -> None:
    """A township's own template cannot make a drill pass for the real thing."""
    s = make_settings(tmp_path, tmp_path, messages={"templates": {"issue": {"title": "{event}预警",
                      "text": "{headline}", "speech": "{headline}。"}}})  # fmt: skip
    values = messages.values_for({**WARNING, "status": "exercise"}, "issue", {}, settings=s, directory=None,
                                 channel="loudspeaker")  # fmt: skip
    r = messages.render("issue", values, s.messages)
    assert r.title == "【演练】暴雨预警"
    assert "演练" in r.text
    assert r.speech.startswith("演练")


@pytest.mark.parametrize(
    ("level", "kind", "context", "title"),
    [
        ("red", "issue", {}, "【塘甸镇应急办】暴雨红色预警"),
        ("orange", "reminder", {}, "【塘甸镇应急办】暴雨橙色预警（提醒）"),
        ("yellow", "update", {}, "【塘甸镇应急办】暴雨黄色预警（更新）"),
        ("red", "upgrade", {"old_level": "orange"}, "【塘甸镇应急办】暴雨预警升级为红色"),
        ("yellow", "downgrade", {"old_level": "orange"}, "【塘甸镇应急办】暴雨预警降为黄色"),
        ("blue", "all_clear", {}, "【塘甸镇应急办】解除暴雨蓝色预警"),
    ],
)
def test_title_names_kind_and_level(settings: Any, level: str, kind: str, context: dict, title: str) -> None:
    """The first line names the kind and the level in Chinese."""
    text = sms(kind, settings, level=level, context=context, ack=False, max_segments=5)
    assert text.splitlines()[0] == title


def test_all_clear_says_what_why_and_what_now_never_the_old_instruction(settings: Any) -> None:
    """解除预警: what is lifted, when, the reason and what to do now; not 'evacuate'."""
    context = {"reason": "雨势明显减弱，山洪风险解除", "at": NOW.isoformat()}
    text = sms("all_clear", settings, context=context, ack=False, max_segments=5)
    assert text.splitlines() == [
        "【塘甸镇应急办】解除暴雨红色预警",
        "暴雨红色预警已于7月1日03:12解除。",
        "解除原因：雨势明显减弱，山洪风险解除",
        messages.DEFAULT_ADVICE,
    ]
    values = messages.values_for(WARNING, "all_clear", context, settings=settings, directory=None,
                                 channel="voice")  # fmt: skip
    speech = messages.render("all_clear", values, settings.messages).speech
    for said in (text, speech):
        assert INSTRUCTION not in said
        assert "撤离" not in said and "转移到" not in said
        assert "雨势明显减弱" in said
    # An operator's own advice replaces the default.
    own = sms("all_clear", settings, context={**context, "advice": "今晚仍在安置点住宿"}, ack=False)
    assert "今晚仍在安置点住宿" in own and messages.DEFAULT_ADVICE not in own
    # No reason given: no empty "解除原因：" line.
    assert "解除原因" not in sms("all_clear", settings, context={"at": NOW.isoformat()}, ack=False)


def test_escalation_to_superior_names_who_has_not_confirmed(settings: Any, directory: Directory) -> None:
    """A superior is told who has not confirmed which warning since when, and how to reach them."""
    person = next(p for p in directory.people.values() if p.superior)
    superior = directory.people[person.superior]
    context = {"message": "escalation_superior", "person_id": person.id, "role": person.role,
               "phone": person.phone, "sent_at": NOW.isoformat()}  # fmt: skip
    for channel in ("sms", "voice"):
        values = messages.values_for(
            WARNING, "escalation_superior", context, settings=settings, directory=directory,
            channel=channel, recipient_id=superior.id,
        )  # fmt: skip
        text = messages.channel_text("escalation_superior", values, settings, channel, ack=True)
        assert person.name in text
        assert superior.name in text
        assert ("7月1日03:12" if channel == "sms" else "七月一日三点十二分") in text
        assert "暴雨红色预警" in text
        assert "未确认" in text
    assert (person.phone or "").removeprefix("+86") in text or channel == "voice"


def test_every_kind_reads_complete_with_no_leftovers(settings: Any, directory: Directory) -> None:
    """No kind leaves a placeholder, an empty label or doubled punctuation on any channel."""
    village = next(iter(directory.villages))
    w = {**WARNING, "villages": [village], "description": "雨大"}
    out = messages.preview(w, settings, directory, ["sms", "voice", "loudspeaker", "wechat", "led"], now=NOW)
    assert set(out) == set(messages.KINDS) - {"downgrade"}  # nothing is above red to come down from
    for kind, texts in out.items():
        for channel, text in texts.items():
            assert "{" not in text and "}" not in text, (kind, channel)
            for bad in ("。。", "，。", "：\n", "：。"):
                assert bad not in text, (kind, channel, text)
            assert not text.rstrip().endswith("："), (kind, channel)


def test_unknown_template_field_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    """check-config names messages.templates.issue.text and lists the fields there are."""
    cfg = tmp_path / "warnd.toml"
    cfg.write_text('[messages.templates.issue]\ntext = "{headline} {colour}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    ((key, message),) = err.value.problems
    assert key == "messages.templates.issue.text"
    assert "{colour}" in message and "level" in message


@pytest.mark.parametrize("signature", ["【塘甸镇应急办】", "办", "x" * 13])
def test_bad_signature_is_a_config_error(tmp_path: Path, signature: str) -> None:
    """The signature is the bare registered name, 2–12 characters."""
    cfg = tmp_path / "warnd.toml"
    cfg.write_text(f'[sms]\nsignature = "{signature}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.problems[0][0] == "sms.signature"


@needs_espeak
def test_every_spoken_message_is_mandarin_with_no_english_fallback(
    settings: Any, directory: Directory
) -> None:
    """Every kind's loudspeaker and call text, real and drill, reads as Mandarin in espeak-ng."""
    village = next(iter(directory.villages))
    instruction = "请于08:30前撤离，拨打110求助"
    w = {**WARNING, "villages": [village], "description": "雨大", "instruction": instruction}
    checked = 0
    for status in ("actual", "exercise"):
        drill = {**w, "status": status}
        out = messages.preview(drill, settings, directory, ["voice", "loudspeaker"], now=NOW)
        for texts in out.values():
            for text in texts.values():
                assert_mandarin(text)  # on failure: the text, its pinyin and the transcript
                checked += 1
    # 5 kinds of a red warning on both channels; escalations and the sign-off reminder by call.
    assert checked == 2 * (2 * 5 + 3)
    # Numbers and times come out as a Chinese reader says them.
    said = spoken_text("预计7月1日08:00开始影响，水位4.55米，风力12级，请拨打110")
    assert said == "预计七月一日八点开始影响，水位四点五五米，风力十二级，请拨打幺幺零"


def test_call_script_says_numbers_as_words(settings: Any, directory: Directory) -> None:
    """The Twilio call speaks the onset as 七月一日八点, not digits."""
    village = next(iter(directory.villages))
    values = messages.values_for({**WARNING, "villages": [village]}, "issue", {}, settings=settings,
                                 directory=directory, channel="voice")  # fmt: skip
    text = spoken_text(messages.channel_text("issue", values, settings, "voice", ack=True))
    assert "七月一日八点" in text
    assert not any(c.isdigit() for c in text)
