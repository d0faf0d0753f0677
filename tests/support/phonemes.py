"""What espeak-ng really says: its phoneme transcript of warnd's spoken text, and a Mandarin check.

`assert_mandarin(text)` is the check for any message warnd speaks: run a warning text through
it and it fails, naming the text, the pinyin and the transcript, if espeak-ng would switch to
English anywhere or skip a syllable.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from warnd.audio import AudioSettings
from warnd.speech import pinyin_for_espeak

ESPEAK = "espeak-ng"
# The voice the built-in engine speaks with by default.
VOICE = AudioSettings().voice

needs_espeak = pytest.mark.skipif(
    shutil.which(ESPEAK) is None, reason="espeak-ng is not installed (apt install espeak-ng)"
)

# espeak-ng marks a switch to another language's rules as "(en)" ... "(cmn)".
_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z]+)*\)", re.IGNORECASE)
# One tone-numbered syllable of pinyin_for_espeak's output (pypinyin's syllables: ê, v for ü).
_SYLLABLE = re.compile(r"[a-zêü]+[1-5]")
# espeak-ng writes a Mandarin syllable's tone as its pitch contour, digits 1-5 (55, 35, 214, 51,
# 53, 21, 11...): one run of digits a syllable; a syllabic m/n (呣, 嗯) has none.
_CONTOUR = re.compile(r"[1-5]+")
_TONELESS = re.compile(r"[mn][1-5]")


def espeak_transcript(text: str, *, voice: str = VOICE, pinyin: bool = True) -> str:
    """espeak-ng's phoneme transcript (-x) of text: of pinyin_for_espeak(text) unless pinyin=False."""
    spoken = pinyin_for_espeak(text) if pinyin else text
    result = subprocess.run(
        [ESPEAK, "-v", voice, "-q", "-x", "--stdin"],
        input=spoken,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


def assert_mandarin(text: str, *, voice: str = VOICE) -> str:
    """Fail unless espeak-ng speaks all of text as Mandarin syllables; return the transcript."""
    pinyin = pinyin_for_espeak(text)
    transcript = espeak_transcript(text, voice=voice)
    context = f"\ntext: {text}\npinyin: {pinyin}\ntranscript: {transcript}"
    assert pinyin, f"nothing to say{context}"
    # The input is syllables and pauses only: no digit or letter espeak-ng could read as English.
    leftovers = re.sub(r"[a-zêü]+[1-5]|[,.\s]", "", pinyin)
    assert not leftovers, f"not pinyin: {leftovers!r}{context}"
    assert not _SWITCH.search(transcript), f"espeak-ng switched language{context}"
    syllables = _SYLLABLE.findall(pinyin)
    expected = len(syllables) - sum(1 for s in syllables if _TONELESS.fullmatch(s))
    contours = len(_CONTOUR.findall(transcript))
    assert contours == expected, f"{contours} tones for {expected} syllables{context}"
    return transcript
