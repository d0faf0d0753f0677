"""Warning text made speakable: numbers read as words, then tone-numbered pinyin for espeak-ng.

Pure functions, no I/O. Two steps, one per kind of engine:

`spoken_text(text)` keeps Chinese characters but says every number the way a Chinese reader
says it aloud, so any engine (espeak-ng or an external `[tts] command`) hears words, not digits:

- integers as cardinals: 250 → 二百五十, 10500 → 一万零五百, 1,200 → 一千二百, 10 → 十;
  2 before 千/万/亿 is 两 (两千, 一万两千), before 百 it stays 二 (二百五十, the broadcast form);
- 2 on its own before a measure word is 两 (两米, 两小时, 两个, 两点), but 十二, 二十, 二级,
  二月, 二日 stay 二 (levels, months and days are ordinals);
- decimals: the integer part as a cardinal, the fraction digit by digit: 4.55 → 四点五五;
- a 4-digit number before 年 is a year, said digit by digit: 2026年 → 二零二六年;
- ISO dates 2026-07-01 (or / and . as separators) → 二零二六年七月一日;
- times 08:00 → 八点, 08:30 → 八点三十分, 14:05 → 十四点零五分, 02:00 → 两点 (as people say
  the hour), with seconds when given; a leading zero before 分/秒 is said: 08时05分 → 八时零五分;
- units after a number become words: mm 毫米, cm 厘米, km 公里, m 米, kg 公斤, t 吨, h 小时,
  min 分钟, hPa 百帕, m³/s 立方米每秒, km/h and 公里/小时 公里每小时, m/s 米每秒; "/" between
  Chinese units is 每; a space between a number and a Chinese word goes (12 级 → 十二级);
- 30% → 百分之三十; temperatures -5℃ → 零下五摄氏度, 35°C → 三十五摄氏度; another minus is 负;
- ranges 20～30毫米 / 1-2米 → 二十到三十毫米 / 一到两米 (到 is what people say; the first
  number borrows the unit of the second for 两 and for 零下);
- digit strings are said digit by digit with 1 as 幺, a "，" pause between groups: 11-digit
  mobile numbers (3-4-4, a leading +86 dropped), landlines 0572-2123456, any number after a call word
  (拨打/电话/热线/报警/致电/呼叫/求助/联系: 拨打110 → 拨打幺幺零), runs of 5 or more digits
  not followed by a unit or measure word, and digits right after a Latin letter (G60 → G六零,
  a road or a code). 幺 is how Chinese speakers say 1 in any number that is a string of digits
  (幺幺零, 幺二零): 一 yī and 七 qī differ only in their first consonant and are easily
  confused over a loudspeaker's echo. Cardinals, years and decimals keep 一.
Latin letters and words (LED, A区) are left as they are here.

`pinyin_for_espeak(text)` turns `spoken_text(text)` into tone-numbered pinyin, the only input
espeak-ng's `cmn-latn-pinyin` voice reads entirely as Mandarin (its plain `cmn` voice reads
characters through English letter rules). Checked against espeak-ng 1.51 with `-x`:

- pypinyin with its phrase dictionary chooses the reading of 多音字 (重庆 chong2, 银行 hang2,
  降水 jiang4, 还是 hai2); neutral tone is 5 (espeak-ng reads it low and short), ü is v (lv4);
- espeak-ng does third-tone sandhi itself (ni3 hao3 → 35 214), so it is left to it; it does not
  change 一 and 不, so this module does: 不 is bu2 before a fourth tone, else bu4; 一 is yi2
  before a fourth tone and yi4 before the others (always before 百/千/万/亿: 一万一千 is yi2 wan4
  yi4 qian1), but stays yi1 at the end of a phrase, inside and before numbers (十一, 一二三,
  一百零一's last 一), before 月/日/号/点/级 (dates, times, levels) and after
  第/初/周/期/统/唯/万/之/同/逐/单/专/划/合/如 (第一, 统一, 万一, 之一...) and 复 (回复1: a
  key to press is a digit); A一A and A不A (看一看, 是不是) are neutral. 一点 is taken as a
  time or a decimal, so "a little" (注意一点) keeps yi1 too: in warnings a time is likelier;
- one syllable a word, as espeak-ng itself speaks Chinese characters, so its prosody is kept;
- ，、；：and brackets become "," (a short pause), 。！？… become "." at the end of a line (a
  sentence pause: espeak-ng ignores ". " before a lowercase syllable); quotes and dots in names
  are dropped;
- Latin letters are spelled with the Chinese names of the letters (LED → ai2le5 yi4 di4, A区 →
  ei1 qu1): there is no English voice in the transcript, so no language switch mid-sentence;
- anything else (symbols, characters pypinyin does not know) is dropped, never spelled.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

# pypinyin copies its dictionaries at import, so that a program adding its own phrases
# (load_phrases_dict) leaves the module's untouched; warnd adds none (its pronunciations are
# replaced before pypinyin sees the text). Its documented switch spares the copies (~3 MB).
os.environ.setdefault("PYPINYIN_NO_DICT_COPY", "1")

from pypinyin import Style, lazy_pinyin  # after the switch above
from pypinyin.constants import PHRASES_DICT


def _share_readings(phrases: dict[str, list[list[str]]]) -> None:
    """Make phrases with the same syllable reading share one list of it.

    The phrase dictionary comes from JSON: each of its 47,000 phrases holds its own list and
    string per syllable, 110,000 of each, for 1,250 distinct readings: importing pypinyin costs
    49 MB (tracemalloc, the copies spared), 26 MB once they are shared (~60 ms, once). pypinyin
    deep-copies a phrase's reading before using it (converter.py), so a shared list never changes.
    """
    readings: dict[tuple[str, ...], list[str]] = {}
    for phrase, value in phrases.items():
        phrases[phrase] = [readings.setdefault(tuple(r), r) for r in value]


_share_readings(PHRASES_DICT)

_DIGITS = "零一二三四五六七八九"
# A digit string (phone number, code) says 1 as 幺; see the module docstring.
_DIGITS_YAO = "零幺二三四五六七八九"
_NUMERALS = frozenset("零〇一二三四五六七八九十两幺")

# Units after a number, longest first so "mm" wins over "m" and "m³/s" over "m³".
_UNITS: dict[str, str] = {
    "m³/s": "立方米每秒",
    "m3/s": "立方米每秒",
    "km/h": "公里每小时",
    "mm/h": "毫米每小时",
    "m/s": "米每秒",
    "km²": "平方公里",
    "m²": "平方米",
    "m³": "立方米",
    "hPa": "百帕",
    "min": "分钟",
    "mm": "毫米",
    "cm": "厘米",
    "km": "公里",
    "kg": "公斤",
    "m": "米",
    "t": "吨",
    "h": "小时",
    "°C": "摄氏度",
    "℃": "摄氏度",
    "°": "度",
    "%": "%",  # said before the number (百分之三十): _sub_number moves it
}
_TEMPERATURE = ("摄氏度", "度")
# After these a bare 2 is 两: measure words and units that count, not ordinals (级, 月, 日, 号).
_LIANG_BEFORE = (
    "个", "米", "小时", "天", "次", "人", "名", "户", "座", "辆", "条", "只", "台", "处", "公里",
    "千米", "毫米", "厘米", "立方米", "平方", "吨", "公斤", "倍", "分钟", "周", "年", "点",
    "万", "千", "亿", "趟", "遍", "场", "家", "所", "艘", "头", "间", "批", "项", "组", "支", "位",
    "栋", "套", "张", "份",
)
# A run of 5+ digits followed by one of these is a quantity (12000人), not a digit string.
_COUNTED = (*_LIANG_BEFORE, "余", "多", "级", "元", "亩", "公顷", "度", "摄氏度")
# Chinese units joined by "/": 公里/小时 is said 公里每小时.
_PER_UNIT = re.compile(r"(毫米|厘米|公里|千米|立方米|米|吨|公斤|人)/(小时|秒|分钟|天|日)")

_NUM = r"\d+(?:,\d{3}(?!\d))*(?:\.\d+)?"
_UNIT_ALT = "|".join(re.escape(u) for u in _UNITS)
# Fullwidth digits, letters and ％ from Chinese input methods, as ASCII.
_FULLWIDTH = str.maketrans(
    "０１２３４５６７８９％"
    "ＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳＴＵＶＷＸＹＺａｂｃｄｅｆｇｈｉｊｋｌｍｎｏｐｑｒｓｔｕｖｗｘｙｚ",
    "0123456789%ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
)
_CALL_WORDS = "拨打|电话|热线|报警|致电|呼叫|求助|联系"


def _digits(s: str, *, yao: bool = True) -> str:
    """A digit string said digit by digit (1 as 幺 unless yao is False)."""
    table = _DIGITS_YAO if yao else _DIGITS
    return "".join(table[int(c)] for c in s if c.isdigit())


def _section(n: int) -> str:
    """1..9999 as a cardinal, with 零 for inner zeros and 两 for 2 before 千."""
    out, gap = "", False
    for value, name in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = n // value % 10
        if d == 0:
            gap = bool(out)
            continue
        if gap:
            out, gap = out + "零", False
        out += ("两" if d == 2 and name == "千" else _DIGITS[d]) + name
    return out


def _cardinal(n: int) -> str:
    """A non-negative integer as a Chinese reader says it: 250 → 二百五十, 10500 → 一万零五百."""
    if n == 0:
        return "零"
    if n >= 10**12:  # beyond 千亿 nobody says it as a quantity: a string of digits
        return _digits(str(n))
    out = ""
    for big, unit in ((10**8, "亿"), (10**4, "万"), (1, "")):
        sec = n // big % 10**4
        if sec == 0:
            continue
        if out and sec < 1000:  # 一万零五百: the zero between sections is said
            out += "零"
        out += ("两" if sec == 2 and unit else _section(sec)) + unit
    return out[1:] if out.startswith("一十") else out  # 十五, not 一十五


def _number(s: str) -> str:
    """A number as written (commas, a decimal point) as a cardinal with its fraction digits."""
    whole, _, frac = s.replace(",", "").partition(".")
    said = _cardinal(int(whole))
    return f"{said}点{_digits(frac, yao=False)}" if frac else said


def _phone(s: str) -> str:
    """A phone number digit by digit, a pause between groups (a mobile number's are 3-4-4)."""
    d = "".join(c for c in s if c.isdigit())
    if len(d) == 11 and d.startswith("1"):
        return "，".join(_digits(part) for part in (d[:3], d[3:7], d[7:]))
    return "，".join(_digits(part) for part in re.findall(r"\d+", s))


def _hour(s: str) -> str:
    """An hour as said before 点: 02 → 两, 14 → 十四."""
    h = int(s)
    return "两" if h == 2 else _cardinal(h)


def _sub_time(m: re.Match[str]) -> str:
    """08:30 → 八点三十分, 14:05 → 十四点零五分, 08:00 → 八点."""
    hour, minute, second = m["h"], m["m"], m["s"]
    out = _hour(hour) + "点"
    if int(minute) or (second and int(second)):
        out += ("零" if minute.startswith("0") and minute != "00" else "") + _cardinal(int(minute)) + "分"
    if second and int(second):
        out += ("零" if second.startswith("0") else "") + _cardinal(int(second)) + "秒"
    return out


def _sub_date(m: re.Match[str]) -> str:
    """2026-07-01 → 二零二六年七月一日 (and ISO's T before a time becomes a space)."""
    date = f"{_digits(m['y'], yao=False)}年{_cardinal(int(m['mo']))}月{_cardinal(int(m['d']))}日"
    return date + (" " if m["t"] else "")


def _sub_call(m: re.Match[str]) -> str:
    """Numbers after a call word (拨打110或119) digit by digit, 1 as 幺."""
    return m["cue"] + re.sub(r"\d+(?:-\d+)*", lambda n: _phone(n[0]), m["rest"])


_RANGE_TAIL = re.compile(rf"到[-−]?{_NUM}[ \t]*(?P<unit>{_UNIT_ALT})?(?![A-Za-z])")


def _unit_after(rest: str, unit: str | None) -> str:
    """What follows a number, as words: its own unit, or the unit of a range's second number."""
    if unit is not None:
        return _UNITS[unit]
    tail = _RANGE_TAIL.match(rest)
    if tail is not None:
        return _UNITS[tail["unit"]] if tail["unit"] else rest[tail.end() :]
    return rest


def _sub_number(m: re.Match[str]) -> str:
    """One number with its sign and unit, read by what it counts (see the module docstring)."""
    num, unit, rest = m["num"], m["unit"], m.string[m.end() :]
    after = _unit_after(rest, unit)
    integer = "." not in num and "," not in num
    if unit is None and integer and len(num) == 4 and rest.startswith("年"):
        said = _digits(num, yao=False)  # a year
    elif unit is None and integer and len(num) >= 5 and not rest.startswith(_COUNTED):
        said = _digits(num)  # a phone number or code without a call word
    elif unit is None and integer and len(num) == 2 and num[0] == "0" and rest.startswith(("分", "秒")):
        said = "零" + (_DIGITS[int(num[1])] if num[1] != "0" else "")  # 08时05分: 八时零五分
    elif num == "2" and after.startswith(_LIANG_BEFORE) and not m.string[: m.start()].endswith("第"):
        said = "两"  # but 第2个 is an ordinal: 第二个
    else:
        said = _number(num)
    spoken_unit = "" if unit is None else _UNITS[unit]
    if after.startswith("%"):  # its own % or, in 30～50%, the range's
        said, spoken_unit = "百分之" + said, ""
    if m["sign"]:
        said = ("零下" if after.startswith(_TEMPERATURE) else "负") + said
    gap = m["gap"] if unit is None and not re.match(r"[\u3400-\u9fff]", rest) else ""
    return said + gap + spoken_unit


# The passes of spoken_text, in order: each turns its digits into words, so later passes never
# see them again. Dates and phone numbers first (their hyphens are not ranges), then ranges
# (08:00-10:00 still has its digits), times, numbers with units, and last the digits that are
# left (codes like G60).
_PASSES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (
        re.compile(
            r"(?<!\d)(?P<y>\d{4})(?P<sep>[-/.])(?P<mo>0?[1-9]|1[0-2])(?P=sep)(?P<d>0?[1-9]|[12]\d|3[01])(?!\d)"
            r"(?P<t>T(?=\d))?"
        ),
        _sub_date,
    ),
    (
        re.compile(
            rf"(?P<cue>{_CALL_WORDS})(?P<rest>(?:号码|电话|热线)?[:：]?[ \t]*\d{{3,}}(?:-\d+)*"
            r"(?:[ \t]*(?:或|、|/|和|及|,|，)[ \t]*\d{3,}(?:-\d+)*)*)(?![\d.])"
        ),
        _sub_call,
    ),
    (re.compile(r"(?<![\d+])(?:\+86[- ]?)?(1[3-9]\d{9})(?!\d)"), lambda m: _phone(m[1])),
    (re.compile(r"(?<!\d)0\d{2,3}-\d{7,8}(?!\d)"), lambda m: _phone(m[0])),
    (re.compile(r"(?<=[\d%℃°日号时点分月])[ \t]*[~～〜–—-][ \t]*(?=[-−]?\d)"), "到"),
    (
        re.compile(r"(?<![\d.])(?P<h>[01]?\d|2[0-4])[:：](?P<m>[0-5]\d)(?:[:：](?P<s>[0-5]\d))?(?!\d)"),
        _sub_time,
    ),
    (_PER_UNIT, r"\1每\2"),
    (
        re.compile(
            rf"(?:(?<![A-Za-z0-9.])(?P<sign>[-−])(?=\d))?(?<![A-Za-z0-9.,])(?P<num>{_NUM})"
            rf"(?P<gap>[ \t]*)(?:(?P<unit>{_UNIT_ALT})(?![A-Za-z]))?"
        ),
        _sub_number,
    ),
    (re.compile(r"\d+"), lambda m: _digits(m[0])),
)


def spoken_text(text: str) -> str:
    """Text with every number, date, time and unit written as the words a Chinese reader says."""
    text = text.translate(_FULLWIDTH)
    for pattern, repl in _PASSES:
        text = pattern.sub(repl, text)
    return text


# --- pinyin for espeak-ng ---------------------------------------------------------------------

# The Chinese names of the Latin letters, as tone-numbered pinyin (one word a letter).
_LETTERS: dict[str, str] = {
    "a": "ei1", "b": "bi4", "c": "xi1", "d": "di4", "e": "yi4", "f": "ai2fu5", "g": "ji4",
    "h": "ai1qi1", "i": "ai4", "j": "jie1", "k": "kai1", "l": "ai2le5", "m": "ai2mu5",
    "n": "en1", "o": "ou1", "p": "pi4", "q": "qiu1", "r": "a1er5", "s": "ai2si5", "t": "ti4",
    "u": "you1", "v": "wei1", "w": "da2bu5liu5", "x": "ai2ke5si5", "y": "wai4", "z": "zei4",
}
# Punctuation as the pause espeak-ng makes for it: "," short, "." (at a line's end) long.
_PAUSES: dict[str, str] = (
    dict.fromkeys("，、；：,;:【】（）()《》〈〉「」『』[]{}—–-~～/|\\", ",")
    | dict.fromkeys("。！？!?…\n", ".")
)
# 一 keeps its first tone after these (ordinals, word-final 一) and before these (numbers,
# dates, times, levels); see the module docstring.
_YI_STAYS_AFTER = _NUMERALS | frozenset("第初周期拜其统唯万之同逐单专划合如复")
_YI_STAYS_BEFORE = _NUMERALS | frozenset("月日号点级")
_TOKEN = re.compile(
    r"(?P<han>[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff〇]+)|(?P<latin>[A-Za-z]+)|(?P<other>.)", re.DOTALL
)
_SYLLABLE = re.compile(r"[a-zêü]+[1-5]")


def _tone(syllable: str) -> str:
    """The tone digit of a tone-numbered syllable ("" for a character without one)."""
    return syllable[-1:]


def _sandhi(chars: str, syllables: list[str]) -> list[str]:
    """一 and 不 changed by the syllable after them (espeak-ng does third-tone sandhi itself)."""
    out = list(syllables)
    for i, ch in enumerate(chars):
        if ch not in "一不" or not syllables[i]:
            continue
        prev = chars[i - 1] if i > 0 else ""
        nxt = chars[i + 1] if i + 1 < len(chars) else ""
        base = "yi" if ch == "一" else "bu"
        if not nxt:
            out[i] = base + ("1" if ch == "一" else "4")
        elif ch == "一" and nxt not in "百千万亿" and (prev in _YI_STAYS_AFTER or nxt in _YI_STAYS_BEFORE):
            out[i] = "yi1"
        elif prev and prev == nxt:
            out[i] = base + "5"  # 看一看, 是不是
        elif ch == "一":
            out[i] = "yi2" if _tone(syllables[i + 1]) in ("4", "5") else "yi4"
        else:
            out[i] = "bu2" if _tone(syllables[i + 1]) == "4" else "bu4"
    return out


def _han_syllables(han: str) -> list[str]:
    """Tone-numbered pinyin of a run of Chinese characters, one syllable a character."""
    raw = lazy_pinyin(
        han,
        style=Style.TONE3,
        neutral_tone_with_five=True,
        # pypinyin's stub says `errors` returns a str; a list (one item per character) is documented.
        errors=lambda chars: ["?"] * len(chars),  # type: ignore[arg-type,return-value]
    )
    # A character pypinyin has no reading for (rare variants) is "" and is left out below.
    syllables = [s if _SYLLABLE.fullmatch(s) else "" for s in raw]
    if len(syllables) != len(han):  # never seen; sandhi needs one syllable a character
        return [s for s in syllables if s]
    return [s for s in _sandhi(han, syllables) if s]


def _with_pronunciations(han: str, pronunciations: Mapping[str, str]) -> list[str]:
    """Syllables of a run of characters, phrases the township spelled out read as it says."""
    if not pronunciations:
        return _han_syllables(han)
    phrases = sorted((p for p in pronunciations if p in han), key=len, reverse=True)
    out: list[str] = []
    i = start = 0
    while i < len(han):
        phrase = next((p for p in phrases if han.startswith(p, i)), None)
        if phrase is None:
            i += 1
            continue
        out.extend(_han_syllables(han[start:i]) if i > start else [])
        out.extend(pronunciations[phrase].split())
        i = start = i + len(phrase)
    out.extend(_han_syllables(han[start:]) if start < len(han) else [])
    return out


def pinyin_for_espeak(text: str, pronunciations: Mapping[str, str] | None = None) -> str:
    """spoken_text(text) as tone-numbered pinyin for espeak-ng's cmn-latn-pinyin voice.

    `pronunciations` maps phrases (place and person names pypinyin reads wrongly: 塘甸 is
    tang2 dian4) to their syllables; the longest phrase wins where two overlap.
    """
    words: list[str] = []

    def pause(mark: str) -> None:
        """End the current phrase with a pause, the longer one winning, none at the start."""
        if not words:
            return
        if words[-1] in (",", "."):
            if mark == ".":
                words[-1] = "."
            return
        words.append(mark)

    for m in _TOKEN.finditer(spoken_text(text)):
        if m["han"]:
            words.extend(_with_pronunciations(m["han"], pronunciations or {}))
        elif m["latin"]:
            words.extend(_LETTERS[c] for c in m["latin"].lower())
        elif m["other"] in _PAUSES:
            pause(_PAUSES[m["other"]])
    if words and words[-1] == ",":
        words[-1] = "."
    return " ".join(words).replace(" ,", ",").replace(" . ", ".\n").replace(" .", ".")


__all__: list[str] = ["pinyin_for_espeak", "spoken_text"]
