"""warnd.speech: numbers read as a Chinese reader says them, pinyin espeak-ng speaks as Mandarin.

The phoneme tests run the real espeak-ng on what warnd feeds it and read its transcript (-x).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydub import AudioSegment
from pypinyin.contrib.tone_convert import to_tone3
from pypinyin.pinyin_dict import pinyin_dict

from tests.support.phonemes import assert_mandarin, espeak_transcript, needs_espeak
from warnd.audio import TONE_GAP_MS, AudioCache, AudioError, AudioSettings, alert_tone
from warnd.speech import pinyin_for_espeak, spoken_text

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt install ffmpeg)"
)

# Realistic loudspeaker texts of every kind warnd speaks, with numbers, times, Latin letters
# and the punctuation of real notices.
MESSAGES: dict[str, str] = {
    "issue": (
        "【暴雨红色预警】湖州市气象台2026年7月1日06:30发布暴雨红色预警：预计7月1日08:00至2日20:00，"
        "累计降雨量可达250毫米，最大小时雨强60毫米，河道水位将超警戒水位0.8米。"
        "请沿河低洼地带群众立即转移到安置点！"
    ),
    "update": "预警更新。暴雨红色预警。雨带北移，预计12:00前累计雨量增至300mm，请仍在A区的群众2小时内撤离。",
    "upgrade": "预警升级：山洪由橙色升级为红色（I级），塘甸村、河口村请立即转移，转移路线见LED屏。",
    "downgrade": "预警降级：台风由红色降为黄色，阵风8～10级，风速25m/s，请继续关注。",
    "all_clear": (
        "解除预警。现在解除暴雨红色预警。因降雨减弱，水位已回落至4.55米（警戒水位以下），请群众有序返回。"
    ),
    "escalation": (
        "张伟尚未确认暴雨红色预警（14:05发布），请其上级李娜立即核实，"
        "联系电话13800000001，或拨打值班电话0572-2123456。"
    ),
    "drill": "演练，演练。地质灾害橙色预警（演练）：请B区群众于15:30前到村委会集合，不是真实警情。",
    "reminder": "提醒：您负责的3个村尚有2个未确认，请于2026-07-01 18:00前回复1确认、气温-5℃、湿度30%。",
}


# --- spoken_text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "said"),
    [
        # times: whole hours, minutes, a zero minute said, 2 o'clock is 两点
        ("08:00", "八点"),
        ("08:30", "八点三十分"),
        ("14:05", "十四点零五分"),
        ("02:00", "两点"),
        ("12:00", "十二点"),
        ("08：15", "八点十五分"),
        ("08:00-10:00", "八点到十点"),
        ("08时05分", "八时零五分"),
        # decimals: the fraction digit by digit
        ("4.55米", "四点五五米"),
        ("0.8米", "零点八米"),
        # levels, with or without a space
        ("12 级", "十二级"),
        ("12级", "十二级"),
        ("2级", "二级"),
        # cardinals and units
        ("250毫米", "二百五十毫米"),
        ("250mm", "二百五十毫米"),
        ("10500人", "一万零五百人"),
        ("1,200户", "一千二百户"),
        ("10个村", "十个村"),
        ("110人", "一百一十人"),
        ("2000人", "两千人"),
        ("12000人", "一万两千人"),
        ("3.5万人", "三点五万人"),
        ("60km/h", "六十公里每小时"),
        ("20公里/小时", "二十公里每小时"),
        ("5 m/s", "五米每秒"),
        ("1200m³/s", "一千二百立方米每秒"),
        ("1200m3/s", "一千二百立方米每秒"),
        ("1000立方米/秒", "一千立方米每秒"),
        ("1013hPa", "一千零一十三百帕"),
        ("24h", "二十四小时"),
        # dates: years digit by digit, months and days as cardinals
        ("7月1日", "七月一日"),
        ("2026年", "二零二六年"),
        ("2026-07-01", "二零二六年七月一日"),
        ("2026/7/1 08:00", "二零二六年七月一日 八点"),
        ("2026-07-01T08:00", "二零二六年七月一日 八点"),
        ("3年", "三年"),
        # percent and temperature
        ("30%", "百分之三十"),
        ("30％", "百分之三十"),
        ("0.5%", "百分之零点五"),
        ("30%～50%", "百分之三十到百分之五十"),
        ("30～50%", "百分之三十到百分之五十"),
        ("-5℃", "零下五摄氏度"),
        ("气温-5℃", "气温零下五摄氏度"),
        ("35°C", "三十五摄氏度"),
        ("-5～3℃", "零下五到三摄氏度"),
        ("水位-0.5米", "水位负零点五米"),
        # 两 before a measure word, 二 elsewhere
        ("2米", "两米"),
        ("2小时", "两小时"),
        ("2个", "两个"),
        ("2到3个", "两到三个"),
        ("1-2米", "一到两米"),
        ("12米", "十二米"),
        ("20米", "二十米"),
        ("2月2日", "二月二日"),
        ("2", "二"),
        ("第2个", "第二个"),
        # ranges
        ("20～30毫米", "二十到三十毫米"),
        ("风力6~8级", "风力六到八级"),
        # digit strings: 1 is 幺
        ("13800000001", "幺三八，零零零零，零零零幺"),
        ("+8613800000001", "幺三八，零零零零，零零零幺"),
        ("电话：0572-2123456", "电话：零五七二，二幺二三四五六"),
        ("请拨打110或119", "请拨打幺幺零或幺幺九"),
        ("报警电话110", "报警电话幺幺零"),
        ("12345热线", "幺二三四五热线"),
        ("编号100235", "编号幺零零二三五"),
        ("G60高速", "G六零高速"),
        # fullwidth digits from an input method
        ("７月１日", "七月一日"),
        # Latin letters are the next step's business
        ("A区LED屏", "A区LED屏"),
    ],
)
def test_spoken_text_reads_numbers_as_words(text: str, said: str) -> None:
    """Each rule of the module docstring, one reading at a time."""
    assert spoken_text(text) == said


def test_spoken_text_reads_a_real_forecast() -> None:
    """A forecast sentence with dates, times, amounts and a decimal water level."""
    text = "预计7月1日08:00至2日20:00，累计降雨量可达250毫米，最大小时雨强60毫米，河道水位将超警戒水位0.8米"
    assert spoken_text(text) == (
        "预计七月一日八点至二日二十点，累计降雨量可达二百五十毫米，最大小时雨强六十毫米，"
        "河道水位将超警戒水位零点八米"
    )


def test_spoken_text_reads_a_real_escalation() -> None:
    """An escalation with a time, a count and a phone number."""
    text = "张伟尚未确认14:05发布的暴雨红色预警，3个村中2个未回复，请拨打13800000001核实。"
    assert spoken_text(text) == (
        "张伟尚未确认十四点零五分发布的暴雨红色预警，三个村中两个未回复，"
        "请拨打幺三八，零零零零，零零零幺核实。"
    )


@pytest.mark.parametrize(
    "text",
    [
        "气象台发布暴雨红色预警，请沿河低洼地带群众立即转移到安置点。",
        "请注意 转移; rm -rf / && echo $HOME `id` 'single' \"double\" {output} \\ *",
        "【演练】山洪橙色预警：A区、B区（LED屏）",
    ],
)
def test_spoken_text_leaves_text_without_numbers_alone(text: str) -> None:
    """Nothing but numbers changes: wording, punctuation and Latin stay as written."""
    assert spoken_text(text) == text


def test_spoken_text_is_idempotent_and_leaves_no_digit() -> None:
    """Its output has no digit left, so reading it again changes nothing."""
    for text in MESSAGES.values():
        once = spoken_text(text)
        assert not re.search(r"[0-9０-９]", once), once
        assert spoken_text(once) == once
        assert pinyin_for_espeak(once) == pinyin_for_espeak(text)


# --- pinyin_for_espeak ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "syllables"),
    [
        ("重庆", "chong2 qing4"),
        ("行人", "xing2 ren2"),
        ("银行", "yin2 hang2"),
        ("降水", "jiang4 shui3"),
        ("长江", "chang2 jiang1"),
        ("重要", "zhong4 yao4"),
        ("还是", "hai2 shi4"),
        ("地区", "di4 qu1"),
        ("重新", "chong2 xin1"),
        ("长大", "zhang3 da4"),
        ("着火", "zhao2 huo3"),
        ("调度", "diao4 du4"),
        # neutral tone is 5, ü is v
        ("负责的", "fu4 ze2 de5"),
        ("绿色", "lv4 se4"),
        ("女儿", "nv3 er2"),
    ],
)
def test_polyphones_take_the_reading_of_their_word(text: str, syllables: str) -> None:
    """pypinyin's phrase dictionary picks the reading of each 多音字 from its word."""
    assert pinyin_for_espeak(text) == syllables


@pytest.mark.parametrize(
    ("text", "syllables"),
    [
        # 一: yi2 before a fourth tone, yi4 before the others
        ("一次", "yi2 ci4"),
        ("一定", "yi2 ding4"),
        ("一天", "yi4 tian1"),
        ("一起", "yi4 qi3"),
        ("一年", "yi4 nian2"),
        ("2米", "liang3 mi3"),
        ("1米", "yi4 mi3"),
        ("100人", "yi4 bai3 ren2"),
        ("10000人", "yi2 wan4 ren2"),
        ("11000人", "yi2 wan4 yi4 qian1 ren2"),
        # ... but yi1 in numbers, dates, times, levels, ordinals and at a word's end
        ("第一", "di4 yi1"),
        ("统一指挥", "tong3 yi1 zhi3 hui1"),
        ("万一发生", "wan4 yi1 fa1 sheng1"),
        ("11", "shi2 yi1"),
        ("101", "yi4 bai3 ling2 yi1"),
        ("7月1日", "qi1 yue4 yi1 ri4"),
        ("01:00", "yi1 dian3"),
        ("1级", "yi1 ji2"),
        ("2021年", "er4 ling2 er4 yi1 nian2"),
        ("回复1确认", "hui2 fu4 yi1 que4 ren4"),
        ("看一看", "kan4 yi5 kan4"),
        # 不: bu2 before a fourth tone, bu4 otherwise, neutral in A不A
        ("不要", "bu2 yao4"),
        ("不去", "bu2 qu4"),
        ("不能", "bu4 neng2"),
        ("不准", "bu4 zhun3"),
        ("是不是", "shi4 bu5 shi4"),
        # third tones are left to espeak-ng, which changes them itself
        ("小雨", "xiao3 yu3"),
    ],
)
def test_yi_and_bu_change_tone_as_spoken(text: str, syllables: str) -> None:
    """一 and 不 sandhi, which espeak-ng does not do; 3-3 sandhi, which it does, is left alone."""
    assert pinyin_for_espeak(text) == syllables


def test_punctuation_becomes_pauses_espeak_honours() -> None:
    """Commas and brackets are short pauses, sentence ends are line ends; none at the start."""
    text = "【暴雨红色预警】请注意：立即转移！“安置点”在（村委会）。"
    assert pinyin_for_espeak(text) == (
        "bao4 yu3 hong2 se4 yu4 jing3, qing3 zhu4 yi4, li4 ji2 zhuan3 yi2.\n"
        "an1 zhi4 dian3 zai4, cun1 wei3 hui4."
    )


def test_latin_letters_are_spelled_with_chinese_letter_names() -> None:
    """LED and A区 are spelled letter by letter in pinyin, never handed to an English voice."""
    assert pinyin_for_espeak("A区LED屏") == "ei1 qu1 ai2le5 yi4 di4 ping2"
    letters = pinyin_for_espeak("ABCDEFGHIJKLMNOPQRSTUVWXYZ").split()
    assert len(letters) == 26 == len(set(letters))
    assert letters == pinyin_for_espeak("abcdefghijklmnopqrstuvwxyz").split()
    assert all(re.fullmatch(r"(?:[a-z]+[1-5])+", name) for name in letters)


def test_symbols_are_dropped_not_spelled() -> None:
    """Symbols and unknown characters have no reading: they are left out, never spelled."""
    assert pinyin_for_espeak("请注意@#&*") == "qing3 zhu4 yi4"
    assert pinyin_for_espeak("请兙注意") == "qing3 zhu4 yi4"  # a character pypinyin cannot read
    assert pinyin_for_espeak("！！！…") == ""


# --- what espeak-ng really says ---------------------------------------------------------------



@needs_espeak
@pytest.mark.parametrize("kind", MESSAGES)
def test_every_kind_of_message_is_spoken_as_mandarin(kind: str) -> None:
    """No English language switch and a Mandarin tone for every syllable, numbers and LED too."""
    transcript = assert_mandarin(MESSAGES[kind])
    assert "(en)" not in transcript


@needs_espeak
def test_the_plain_cmn_voice_would_have_spoken_english() -> None:
    """The check can fail: espeak-ng's cmn voice reads these characters through English rules."""
    assert "(en)" in espeak_transcript("暴雨红色预警", voice="cmn", pinyin=False)
    with pytest.raises(AssertionError, match="switched language"):
        assert_mandarin("暴雨红色预警", voice="cmn")


@needs_espeak
def test_a_known_sentence_has_the_expected_mandarin_phonemes() -> None:
    """Tones as espeak-ng's contours (half-third 21 before a non-third), initials by word."""
    transcript = assert_mandarin("暴雨红色预警")
    assert re.findall(r"[1-5]+", transcript) == ["51", "21", "35", "51", "51", "214"]
    # 银行 is hang (velar fricative X), not xing (S;); 重庆 is ch (ts.h), not zh (ts.).
    bank = assert_mandarin("银行")
    assert re.search(r"X'?a35N", bank) and "S;" not in bank
    assert re.search(r"S;'?i35N", assert_mandarin("行人"))
    city = assert_mandarin("重庆")
    assert re.search(r"ts\.h'?ong35", city)
    # 3-3 sandhi is espeak-ng's: xiao3 yu3 comes out rising, then dipping.
    assert re.findall(r"[1-5]+", assert_mandarin("小雨")) == ["35", "214"]


@needs_espeak
def test_every_syllable_pypinyin_can_produce_is_mandarin_to_espeak() -> None:
    """All ~1,500 toned syllables in pypinyin's dictionary, and the letter names, in one run."""
    syllables = {to_tone3(p, neutral_tone_with_five=True) for v in pinyin_dict.values() for p in v.split(",")}
    letters = pinyin_for_espeak("abcdefghijklmnopqrstuvwxyz").split()
    spoken = ", ".join(sorted(syllables) + letters)
    transcript = espeak_transcript(spoken, pinyin=False)
    assert not re.search(r"\([a-z-]+\)", transcript)
    assert len(syllables) > 1000


# --- the audio renderer -----------------------------------------------------------------------


def espeak_ms(pinyin: str, wav: Path) -> int:
    """How long espeak-ng's cmn-latn-pinyin voice takes to say pinyin at 150 wpm, in ms."""
    argv = ["espeak-ng", "-v", "cmn-latn-pinyin", "-s", "150", "-w", str(wav), "--", pinyin]
    subprocess.run(argv, check=True)
    return len(AudioSegment.from_wav(wav))


# An espeak-ng first on PATH that records its argv and runs the real one.
RECORDING_ESPEAK = """#!{python}
import json, os, sys
with open({log!r}, "a", encoding="utf-8") as f:
    f.write(json.dumps(sys.argv[1:], ensure_ascii=False) + "\\n")
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


@needs_espeak
@needs_ffmpeg
async def test_rendered_warning_is_espeak_speaking_the_pinyin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The built-in engine gets the pinyin and the pinyin voice; the MP3 is that speech, not silence."""
    real, log = shutil.which("espeak-ng"), tmp_path / "argv.jsonl"
    wrapper = tmp_path / "bin" / "espeak-ng"
    wrapper.parent.mkdir()
    wrapper.write_text(RECORDING_ESPEAK.format(python=sys.executable, log=str(log), real=real))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")

    text = MESSAGES["issue"]
    audio = await AudioCache(tmp_path / "audio", AudioSettings()).render(text, "red", repeat=1)

    (argv,) = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert argv[argv.index("-v") + 1] == "cmn-latn-pinyin"
    assert argv[-2:] == ["--", pinyin_for_espeak(text)]
    seg = AudioSegment.from_file(audio.path, format="mp3")
    speech = seg[len(alert_tone("red")) + TONE_GAP_MS :]
    assert speech.dBFS > -30
    speech_ms = espeak_ms(pinyin_for_espeak(text), tmp_path / "ref.wav")
    assert audio.duration_s * 1000 == pytest.approx(len(alert_tone("red")) + TONE_GAP_MS + speech_ms, abs=100)
    # Plausible Mandarin: between 2 and 6 syllables a second.
    syllables = len(re.findall(r"[a-z]+[1-5]", pinyin_for_espeak(text)))
    assert syllables / 6 < speech_ms / 1000 < syllables / 2


@needs_espeak
@needs_ffmpeg
async def test_the_old_cmn_setting_speaks_mandarin_too(tmp_path: Path) -> None:
    """voice = "cmn" (an older config) is the pinyin voice: the same file as the default."""
    assert AudioSettings(voice="cmn").voice == "cmn-latn-pinyin"
    assert AudioSettings(voice="zh+f3").voice == "cmn-latn-pinyin+f3"
    assert AudioSettings(voice="yue").voice == "yue"
    default = await AudioCache(tmp_path / "a", AudioSettings()).render("请注意", "blue", repeat=1)
    old = await AudioCache(tmp_path / "b", AudioSettings(voice="cmn")).render("请注意", "blue", repeat=1)
    assert old.sha256 == default.sha256


@needs_espeak
async def test_text_with_nothing_to_say_is_an_error(tmp_path: Path) -> None:
    """Only symbols: the renderer says so instead of encoding silence."""
    cache = AudioCache(tmp_path / "audio", AudioSettings())
    with pytest.raises(AudioError, match="nothing"):
        await cache.render("！！！", "red")


# A stand-in external engine: records the text it was given, writes half a second of tone.
RECORDING_ENGINE = r"""
import math, struct, sys, wave
out, log, text = sys.argv[1:4]
open(log, "w", encoding="utf-8").write(text)
with wave.open(out, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
    w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 5))) for i in range(8000)))
"""


@needs_ffmpeg
async def test_an_external_engine_gets_chinese_with_numbers_as_words(tmp_path: Path) -> None:
    """A `[tts] command` engine reads characters, so it gets spoken_text, not pinyin."""
    script, log = tmp_path / "engine.py", tmp_path / "text.txt"
    script.write_text(RECORDING_ENGINE, encoding="utf-8")
    settings = AudioSettings(command=f"{shlex.join([sys.executable, str(script)])} {{output}} {log} {{text}}")
    await AudioCache(tmp_path / "audio", settings).render("水位4.55米，08:30转移", "orange", repeat=1)
    assert log.read_text(encoding="utf-8") == "水位四点五五米，八点三十分转移"


def test_township_pronunciations_override_place_names() -> None:
    """塘甸 is tang2 dian4 where the township says so; elsewhere pypinyin's reading stands."""
    assert pinyin_for_espeak("塘甸镇通知", {"塘甸": "tang2 dian4"}).startswith("tang2 dian4 zhen4")
    assert pinyin_for_espeak("塘甸镇", {"塘甸": "tang2 dian4", "塘甸镇": "tang2 dian4 zhen1"}) == (
        "tang2 dian4 zhen1"  # the longest phrase wins
    )
    assert pinyin_for_espeak("塘甸镇") != pinyin_for_espeak("塘甸镇", {"塘甸": "tang2 dian4"})
