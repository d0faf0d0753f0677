"""Spoken warnings for village loudspeakers (村村响): TTS, alert tones, MP3 and a content cache.

A warning becomes one MP3: the level's alert tone, then the text spoken `repeat` times with
pauses, loudness-normalised. Files are named by the sha256 of their bytes, so a terminal that
fetches `/audio/{sha256}.mp3` can verify what it got, and a name never changes its content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog
from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydub import AudioSegment
from pydub.exceptions import CouldntDecodeError
from pydub.generators import Sine, Square

from warnd.diskspace import disk_problem
from warnd.model import Level
from warnd.speech import pinyin_for_espeak, spoken_text

log = structlog.get_logger("warnd.audio")

# What a file announces: a warning in force, an exercise (演练), or its lifting (解除).
KINDS: tuple[str, ...] = ("warning", "drill", "all_clear")

# Bump whenever tones, composition, encoding or the way warnd.speech reads text change: it is
# part of every cache key, so old renders are simply not found again instead of being served
# with yesterday's sound. 2: numbers as words, espeak-ng fed pinyin (cmn-latn-pinyin).
FORMAT_VERSION = 2
# A message spoken more than ten times in a row stops being listened to and ties the speaker up;
# periodic re-broadcasts are the scheduler's job, not one long file.
MAX_REPEAT = 10
# ~8 minutes of Mandarin at 4 syllables a second, far past any loudspeaker message, and well
# under Linux's 128 KiB limit for one argv element (3 bytes a character in UTF-8).
MAX_TEXT_CHARS = 2000
# The sample rates MPEG-1/2/2.5 layer III can carry; libmp3lame refuses anything else.
MP3_SAMPLE_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})
# Silence after the alert tone, so outdoor echo of the tone dies down before the first syllable.
TONE_GAP_MS = 700
# A square-wave siren at the same RMS as speech sounds louder (its energy sits where the ear is
# most sensitive); 3 dB under keeps the words the loudest part of the message.
TONE_BELOW_SPEECH_DB = 3.0
# Speech quieter than this (RMS) is an engine that produced silence, not a quiet voice.
SILENCE_DBFS = -60.0
# Peaks are held 1 dB under full scale: MP3 decoding overshoots by a fraction of a dB and cheap
# loudspeaker amplifiers distort on full-scale input.
PEAK_CEILING_DBFS = -1.0
# The limiter takes a little loudness off; passes correct for it until within this many dB
# (a quarter dB is below what a listener can tell, and MP3 encoding moves it about as much).
LOUDNESS_TOLERANCE_DB = 0.25
# What the limiter takes off espeak-ng's speech at the default -16 dBFS: 0.4–0.7 dB measured over
# warnings, all-clears and drills of 9–75 characters at every level. Asked for up front, the first
# pass usually lands within tolerance: one ffmpeg run fewer on the way to a warning's first
# publish (the render is on that path).
EXPECTED_LIMITER_LOSS_DB = 0.5
# Speech at -16 dBFS lands within tolerance on the first or second pass; more cover loud targets
# where the limiter works hard, and the bound keeps a pathological input from looping.
MAX_LOUDNESS_PASSES = 4
# The limiter's dB-out-per-dB-in never measures below this in practice; clamping the estimate
# keeps a noisy measurement from asking for a huge gain.
MIN_LIMITER_SLOPE = 0.2
# Enough of a failing engine's stderr to show its error, not a page of its usage text.
STDERR_TAIL_CHARS = 400
# A render is seconds long even at timeout_s × passes; an hour-old work directory in tmp/ is
# what a crash or kill left behind.
STALE_TMP_S = 3600
# Looked up on PATH, where Debian's ffmpeg and espeak-ng packages put them.
FFMPEG = "ffmpeg"
ESPEAK = "espeak-ng"
# espeak-ng's names for its Mandarin voice that reads Latin as English ("cmn", and "zh", "zh-cmn"
# which select it): with them nothing warnd can feed espeak-ng comes out as Mandarin.
ESPEAK_LATIN_AS_ENGLISH = frozenset({"cmn", "zh", "zh-cmn"})
# The same voice reading Latin as tone-numbered pinyin, which pinyin_for_espeak writes.
ESPEAK_PINYIN_VOICE = "cmn-latn-pinyin"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PLACEHOLDER = re.compile(r"\{(text|output|text_file)\}")


class AudioError(Exception):
    """Rendering failed: the engine or encoder is missing, failed, timed out or produced silence."""


class AudioSettings(BaseModel):
    """How warnings are spoken and encoded (`[tts]` / `[audio]` in warnd.toml).

    Args:
        command: template for an external TTS engine, e.g.
            ``piper --model zh_CN --output_file {output}``; split like a shell line *before*
            ``{text}``, ``{output}`` and ``{text_file}`` are substituted, so the text is always
            one argument. Without ``{text}`` or ``{text_file}`` the text goes to stdin.
            None uses the built-in espeak-ng.
        voice: espeak-ng voice for the built-in engine, which is always fed tone-numbered pinyin
            (`warnd.speech.pinyin_for_espeak`): the Chinese-character reading of espeak-ng's
            ``cmn`` voice goes through English letter rules. ``cmn``, ``zh`` and ``zh-cmn`` (with
            any ``+variant``) are taken as ``cmn-latn-pinyin``, the same voice reading pinyin, so
            an older config keeps speaking Mandarin; any other voice gets the pinyin as it is.
            An external ``command`` engine ignores it and gets Chinese characters with numbers
            written as words (`warnd.speech.spoken_text`).
        speed_wpm: espeak-ng speed in words per minute.
        repeat: times the message is spoken in one file.
        pause_ms: silence between repeats.
        target_dbfs: RMS loudness of the finished file.
        bitrate: MP3 bitrate as ffmpeg spells it.
        sample_rate_hz: sample rate of the MP3.
        timeout_s: limit for each engine and encoder run.
        pronunciations: phrases read otherwise than pypinyin reads them (place and person names),
            as tone-numbered pinyin, one syllable a character: ``塘甸 = "tang2 dian4"``.
    """

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    # espeak-ng's Mandarin voice reading pinyin: the only input it speaks wholly as Mandarin.
    voice: str = Field(default=ESPEAK_PINYIN_VOICE, pattern=r"^[A-Za-z0-9_+-]+$")
    # A little slower than espeak-ng's 175 default: older villagers on a loudspeaker with echo.
    speed_wpm: int = Field(default=150, ge=80, le=450)
    # Twice, as broadcasters do: the first time catches attention, the second is understood.
    repeat: int = Field(default=2, ge=1, le=MAX_REPEAT)
    # Long enough to mark a new start over outdoor echo, short enough not to seem finished.
    pause_ms: int = Field(default=1500, ge=0, le=10_000)
    # Broadcast speech sits around -16 dBFS RMS: loud on small amplifiers, with peak headroom.
    # Above -12 the limiter flattens the speech and MP3 decoding overshoots into clipping;
    # below -40 no loudspeaker amplifier makes it audible.
    target_dbfs: float = Field(default=-16.0, ge=-40.0, le=-12.0)
    # Mono speech at 22 kHz is clear at 64 kbit/s and a minute stays under 500 KB for 4G terminals.
    bitrate: str = Field(default="64k", pattern=r"^[1-9][0-9]{1,2}k$")
    # Speech needs nothing above 11 kHz; espeak-ng renders at 22050 Hz natively.
    sample_rate_hz: int = 22050
    # espeak-ng renders a minute of speech in well under a second; a minute means a hung engine.
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    pronunciations: dict[str, str] = Field(default_factory=dict)

    @field_validator("pronunciations")
    @classmethod
    def _syllable_a_character(cls, value: dict[str, str]) -> dict[str, str]:
        """Each phrase is Chinese characters, spelled as that many tone-numbered syllables."""
        for phrase, spelled in value.items():
            syllables = spelled.split()
            if not re.fullmatch(r"[\u3400-\u9fff]+", phrase):
                raise ValueError(f"{phrase!r}: a phrase is Chinese characters only")
            if len(syllables) != len(phrase) or not all(re.fullmatch(r"[a-zü]+[1-5]", x) for x in syllables):
                raise ValueError(
                    f"{phrase!r} = {spelled!r}: one tone-numbered syllable a character (tang2 dian4)"
                )
        return {p: " ".join(s.split()) for p, s in value.items()}

    @field_validator("command")
    @classmethod
    def _command_template(cls, value: str | None) -> str | None:
        """A command must split cleanly and say where the engine writes its audio."""
        if value is None:
            return None
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot be split into arguments: {exc}") from None
        if not argv:
            raise ValueError("must name a program")
        if not any("{output}" in arg for arg in argv):
            raise ValueError("must contain {output}, where the engine writes its WAV")
        return value

    @field_validator("voice")
    @classmethod
    def _pinyin_voice(cls, value: str) -> str:
        """The Latin-as-English Mandarin voice becomes its pinyin twin, keeping a +variant."""
        name, plus, variant = value.partition("+")
        if name.lower() in ESPEAK_LATIN_AS_ENGLISH:
            return f"{ESPEAK_PINYIN_VOICE}{plus}{variant}"
        return value

    @field_validator("sample_rate_hz")
    @classmethod
    def _mp3_rate(cls, value: int) -> int:
        """Only rates MP3 can carry."""
        if value not in MP3_SAMPLE_RATES:
            raise ValueError(f"must be one of {sorted(MP3_SAMPLE_RATES)}")
        return value


@dataclass(frozen=True, kw_only=True)
class AudioFile:
    """One rendered MP3 in the cache, named by the sha256 of its bytes."""

    sha256: str
    path: Path
    format: str = "mp3"
    duration_s: float
    size: int

    def url(self, public_url: str) -> str:
        """Where terminals fetch this file, given `http.public_url`."""
        return f"{public_url.rstrip('/')}/audio/{self.sha256}.{self.format}"

    def payload(self, public_url: str) -> dict[str, Any]:
        """The `audio` object of an MQTT play command."""
        return {
            "url": self.url(public_url),
            "sha256": self.sha256,
            "format": self.format,
            "duration_s": self.duration_s,
        }


# --- alert tones ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Note:
    """One tone of a pattern: waveform, pitch, length, silence after it, fade-out length."""

    wave: type[Sine] | type[Square]
    hz: float
    ms: int
    gap_ms: int = 0
    fade_ms: int = 5


# Each level has its own rhythm AND pitch so it is recognised before a word is understood; the
# patterns differ in length too, which makes them tellable apart even on a tinny speaker.
TONES: dict[str, tuple[_Note, ...]] = {
    # Red: the fastest pattern, a harsh square-wave hi-lo siren switching every 250 ms (3.0 s).
    "red": (_Note(Square, 960, 250), _Note(Square, 770, 250)) * 6,
    # Orange: the same two-tone idea, softer (sine) and half as fast (3.6 s).
    "orange": (_Note(Sine, 800, 600), _Note(Sine, 600, 600)) * 3,
    # Yellow: three rising beeps, attention without alarm (1.05 s).
    "yellow": (
        _Note(Sine, 660, 250, gap_ms=150),
        _Note(Sine, 880, 250, gap_ms=150),
        _Note(Sine, 1100, 250),
    ),
    # Blue: one soft chime dying away, an announcement rather than an alarm (1.2 s).
    "blue": (_Note(Sine, 880, 1200, fade_ms=900),),
    # Drill (演练): two bursts of four short high pips, a rhythm no real warning uses (1.8 s).
    "drill": (
        *(_Note(Square, 1200, 100, gap_ms=100),) * 3,
        _Note(Square, 1200, 100, gap_ms=400),
        *(_Note(Square, 1200, 100, gap_ms=100),) * 3,
        _Note(Square, 1200, 100),
    ),
    # All clear (解除): one long steady tone, as the civil-defence all-clear (解除警报) is a
    # continuous note rather than a rising and falling one (4.0 s).
    "all_clear": (_Note(Sine, 700, 4000, fade_ms=300),),
}


@lru_cache(maxsize=64)
def alert_tone(name: str, sample_rate_hz: int = 22050) -> AudioSegment:
    """The alert tone `name` (a level, "drill" or "all_clear"), generated, mono 16-bit."""
    try:
        notes = TONES[name]
    except KeyError:
        raise ValueError(f"no alert tone {name!r}; known: {', '.join(TONES)}") from None
    tone = AudioSegment.silent(duration=0, frame_rate=sample_rate_hz)
    for note in notes:
        # 6 dB under full scale leaves room for the fades; the level is set against the speech.
        beep = note.wave(note.hz, sample_rate=sample_rate_hz).to_audio_segment(note.ms, volume=-6)
        # A few ms of fade at each edge turns the click of a hard-cut waveform into nothing.
        tone += beep.fade_in(5).fade_out(note.fade_ms)
        if note.gap_ms:
            tone += AudioSegment.silent(duration=note.gap_ms, frame_rate=sample_rate_hz)
    return tone.set_channels(1).set_sample_width(2)


def _tones_for(level: str, kind: str) -> tuple[list[str], list[str]]:
    """The tones played before and after the speech for a level and kind."""
    if kind == "all_clear":
        return ["all_clear"], []
    if kind == "drill":
        # The drill marker opens AND closes a drill: whoever hears any tone hears it's a drill.
        return ["drill", level], ["drill"]
    return [level], []


# --- external processes ---------------------------------------------------------------------


def _tail(data: bytes) -> str:
    """The end of a process's stderr, decoded, on one line."""
    text = data.decode("utf-8", errors="replace").strip()
    text = " ".join(text.split())
    return text[-STDERR_TAIL_CHARS:] if text else "(no stderr)"


# How long a killed engine process is waited for before warnd goes on without its exit status.
KILL_WAIT_S = 2.0


async def _run(
    argv: Sequence[str],
    *,
    engine: str,
    timeout_s: float,
    stdin: bytes | None = None,
    capture_stdout: bool = False,
) -> bytes:
    """Run argv without a shell, within timeout_s; return stdout or raise AudioError."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if capture_stdout else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group, so a wrapper script's children die with it on timeout.
            start_new_session=True,
        )
    except FileNotFoundError:
        raise AudioError(f"{engine}: program {argv[0]!r} not found") from None
    except OSError as exc:
        raise AudioError(f"{engine}: cannot start {argv[0]!r}: {exc.strerror}") from None
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await proc.communicate(stdin)
    except TimeoutError:
        raise AudioError(f"{engine} timed out after {timeout_s:g} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            # Bounded: after a communicate() cancelled half-way (a shutdown while renders run),
            # Python 3.11's transport can leave wait() pending though the killed child is gone,
            # and an unbounded wait here hung warnd's shutdown (found by make bench).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILL_WAIT_S):
                    await proc.wait()
    if proc.returncode != 0:
        raise AudioError(f"{engine} failed (exit {proc.returncode}): {_tail(stderr)}")
    return stdout or b""


def _substitute(arg: str, values: dict[str, str]) -> str:
    """Fill {text}/{output}/{text_file} in one pass, so substituted text is never re-scanned."""
    return _PLACEHOLDER.sub(lambda m: values[m[1]], arg)


async def _synthesize(text: str, settings: AudioSettings, workdir: Path) -> Path:
    """Speak text into a WAV file in workdir with the configured engine."""
    output = workdir / "speech.wav"
    stdin: bytes | None = None
    if settings.command is None:
        engine = ESPEAK
        text = pinyin_for_espeak(text, settings.pronunciations)
        if not text:
            raise AudioError("nothing in the text can be spoken")
        # "--" so a text starting with "-" is spoken, not parsed as an option. The WAV comes on
        # stdout and is written here: espeak-ng writing it itself exits 0 on a full disk with the
        # speech cut short, which would go out to the villages as a cut-off warning.
        argv = [ESPEAK, "-v", settings.voice, "-s", str(settings.speed_wpm), "--stdout", "--", text]
        wav = await _run(argv, engine=engine, timeout_s=settings.timeout_s, capture_stdout=True)
        await asyncio.to_thread(output.write_bytes, wav)  # OSError (ENOSPC) on a full disk
    else:
        template = shlex.split(settings.command)
        engine = f"TTS engine {Path(template[0]).name!r}"
        text = spoken_text(text)
        text_file = workdir / "text.txt"
        if any("{text_file}" in arg for arg in template):
            await asyncio.to_thread(text_file.write_text, text, encoding="utf-8")
        values = {"text": text, "output": str(output), "text_file": str(text_file)}
        argv = [_substitute(arg, values) for arg in template]
        if not any(p in arg for arg in template for p in ("{text}", "{text_file}")):
            stdin = text.encode("utf-8")  # engines like piper read the text on stdin
        await _run(argv, engine=engine, timeout_s=settings.timeout_s, stdin=stdin)
        # An engine may, like espeak-ng, exit 0 having written only what fitted on a full disk.
        if (full := await asyncio.to_thread(disk_problem, workdir)) is not None:
            raise AudioError(f"{engine} wrote the speech onto a full disk ({full}): it may be cut short")
    if not output.is_file() or output.stat().st_size == 0:
        raise AudioError(f"{engine} exited 0 but wrote no audio to {{output}}")
    return output


# --- composition ----------------------------------------------------------------------------


def _compose(
    speech_wav: Path,
    level: str,
    kind: str,
    repeat: int,
    settings: AudioSettings,
) -> AudioSegment:
    """Tone(s) + speech × repeat with pauses, mono 16-bit at the configured rate (CPU-bound)."""
    rate = settings.sample_rate_hz
    try:
        speech = AudioSegment.from_wav(str(speech_wav))
    except (CouldntDecodeError, EOFError, OSError) as exc:
        raise AudioError(f"TTS output is not readable audio: {exc}") from None
    speech = speech.set_channels(1).set_frame_rate(rate).set_sample_width(2)
    if len(speech) == 0 or speech.dBFS < SILENCE_DBFS:
        raise AudioError("TTS engine produced silence")

    def tone(name: str) -> AudioSegment:
        """A tone levelled against the speech, so neither drowns the other."""
        seg = alert_tone(name, rate)
        return seg.apply_gain(speech.dBFS - TONE_BELOW_SPEECH_DB - seg.dBFS)

    before, after = _tones_for(level, kind)
    gap = AudioSegment.silent(duration=TONE_GAP_MS, frame_rate=rate)
    pause = AudioSegment.silent(duration=settings.pause_ms, frame_rate=rate)
    parts: list[AudioSegment] = []
    for name in before:
        parts += [tone(name), gap]
    for i in range(repeat):
        parts += [pause, speech] if i else [speech]
    for name in after:
        parts += [gap, tone(name)]
    out = parts[0]
    for part in parts[1:]:
        out += part
    return out


def _pcm_dbfs(pcm: bytes, rate: int) -> float:
    """RMS loudness of mono 16-bit PCM, in dBFS (-inf for silence)."""
    return AudioSegment(data=pcm, sample_width=2, frame_rate=rate, channels=1).dBFS


async def _master(seg: AudioSegment, settings: AudioSettings) -> bytes:
    """Normalise to target_dbfs under a peak limiter; returns mono 16-bit PCM.

    The gain is pydub's `target - seg.dBFS`, but applied by ffmpeg in floating point ahead of
    a look-ahead limiter: applied to 16-bit samples it would clip speech peaks hard, since
    speech peaks sit ~18 dB above its RMS. The limiter takes loudness off, more the harder it
    is driven, so the gain is corrected from the measured result by the secant method.
    """
    rate = settings.sample_rate_hz
    if math.isinf(seg.dBFS):
        return seg.raw_data  # silence has no loudness to normalise; nothing to gain
    gain_db = settings.target_dbfs - seg.dBFS + EXPECTED_LIMITER_LOSS_DB
    ceiling = 10 ** (PEAK_CEILING_DBFS / 20)
    raw_in = ["-f", "s16le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0"]
    previous: tuple[float, float] | None = None
    pcm = seg.raw_data
    for _ in range(MAX_LOUDNESS_PASSES):
        pcm = await _run(
            [
                FFMPEG,
                "-hide_banner",
                "-loglevel",
                "error",
                *raw_in,
                "-af",
                f"volume={gain_db:.3f}dB,alimiter=limit={ceiling:.4f}:level=false:latency=true",
                "-f",
                "s16le",
                "-ac",
                "1",
                "-ar",
                str(rate),
                "pipe:1",
            ],
            engine=FFMPEG,
            timeout_s=settings.timeout_s,
            stdin=seg.raw_data,
            capture_stdout=True,
        )
        measured = await asyncio.to_thread(_pcm_dbfs, pcm, rate)
        error_db = settings.target_dbfs - measured
        if math.isinf(error_db) or abs(error_db) <= LOUDNESS_TOLERANCE_DB:
            break
        # dB out per dB in: 1 while the limiter idles, less as it bites. Kept in [0.2, 1] so
        # one pass adds at most five times the error, and never less than the error itself.
        slope = 1.0
        if previous is not None and gain_db != previous[0]:
            slope = (measured - previous[1]) / (gain_db - previous[0])
            slope = min(1.0, max(MIN_LIMITER_SLOPE, slope))
        previous = (gain_db, measured)
        gain_db += error_db / slope
    return pcm


async def _encode_mp3(pcm: bytes, output: Path, settings: AudioSettings) -> None:
    """Encode mono 16-bit PCM as a constant-bitrate MP3 file."""
    rate = str(settings.sample_rate_hz)
    await _run(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "s16le",
            "-ar",
            rate,
            "-ac",
            "1",
            "-i",
            "pipe:0",
            "-c:a",
            "libmp3lame",
            "-b:a",
            settings.bitrate,
            "-ar",
            rate,
            "-ac",
            "1",
            # No metadata and no encoder version string: equal input gives equal bytes.
            "-map_metadata",
            "-1",
            "-fflags",
            "+bitexact",
            "-flags:a",
            "+bitexact",
            "-f",
            "mp3",
            "-y",
            str(output),
        ],
        engine=FFMPEG,
        timeout_s=settings.timeout_s,
        stdin=pcm,
    )


# --- the cache ------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write data to path so readers see the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="write-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class _KeyLock:
    """A per-key lock and how many renders hold or wait for it (to drop it when unused)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class AudioCache:
    """Renders warnings to MP3 once and keeps them, named by content sha256.

    Args:
        directory: where `{sha256}.mp3` files and the `index/` of cache keys live (created).
        settings: the TTS and audio settings; they are part of every cache key.
    """

    def __init__(self, directory: Path, settings: AudioSettings) -> None:
        """Create the cache directories; nothing is rendered yet."""
        self.directory = Path(directory)
        self.settings = settings
        self._index = self.directory / "index"
        self._tmp = self.directory / "tmp"
        for d in (self.directory, self._index, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._sweep_tmp()
        self._locks: dict[str, _KeyLock] = {}

    def _sweep_tmp(self) -> None:
        """Remove what a crashed render left in tmp/ (young entries may be in use)."""
        cutoff = time.time() - STALE_TMP_S
        for entry in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                st = entry.lstat()
                if st.st_mtime >= cutoff:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()

    def cache_key(self, text: str, level: str, kind: str, repeat: int) -> str:
        """sha256 of everything that shapes the sound of a render."""
        s = self.settings
        material = {
            "format_version": FORMAT_VERSION,
            "text": text,
            "level": level,
            "kind": kind,
            "repeat": repeat,
            "voice": s.voice,
            "pronunciations": s.pronunciations,
            "speed_wpm": s.speed_wpm,
            "command": s.command,
            "pause_ms": s.pause_ms,
            "target_dbfs": s.target_dbfs,
            "bitrate": s.bitrate,
            "sample_rate_hz": s.sample_rate_hz,
        }
        encoded = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(encoded.encode("utf-8")).hexdigest()

    def path_for(self, sha256: str) -> Path | None:
        """The stored file for a content sha256, or None (checked as 64 lowercase hex first)."""
        if not _SHA256.fullmatch(sha256):
            return None
        path = self.directory / f"{sha256}.mp3"
        return path if path.is_file() else None

    async def render(
        self,
        text: str,
        level: str,
        *,
        repeat: int | None = None,
        kind: str = "warning",
    ) -> AudioFile:
        """The MP3 for this text, level and kind, rendered now or found in the cache."""
        level = Level(level).value  # ValueError names a bad level
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if not text.strip():
            raise ValueError("text is empty")
        if len(text) > MAX_TEXT_CHARS or "\x00" in text:
            raise ValueError(f"text must be at most {MAX_TEXT_CHARS} characters, without NUL")
        repeat = self.settings.repeat if repeat is None else repeat
        if not 1 <= repeat <= MAX_REPEAT:
            raise ValueError(f"repeat must be 1..{MAX_REPEAT}, not {repeat}")
        key = self.cache_key(text, level, kind, repeat)
        async with self._key_lock(key):
            found = await asyncio.to_thread(self._lookup, key)
            if found is not None:
                log.info("audio.cache_hit", sha256=found.sha256, warning_level=level, kind=kind)
                return found
            return await self._render(key, text, level, kind, repeat)

    async def _render(self, key: str, text: str, level: str, kind: str, repeat: int) -> AudioFile:
        """Synthesize, compose, normalise, encode and store one render."""
        started = time.perf_counter()
        log.debug("audio.render_started", text=text, warning_level=level, kind=kind, repeat=repeat)
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=self._tmp))
        try:
            speech = await _synthesize(text, self.settings, workdir)
            seg = await asyncio.to_thread(_compose, speech, level, kind, repeat, self.settings)
            pcm = await _master(seg, self.settings)
            mp3 = workdir / "out.mp3"
            await _encode_mp3(pcm, mp3, self.settings)
            duration_s = round(len(pcm) / 2 / self.settings.sample_rate_hz, 3)
            audio = await asyncio.to_thread(self._store, key, mp3, duration_s)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
        log.info(
            "audio.rendered",
            sha256=audio.sha256,
            warning_level=level,
            kind=kind,
            repeat=repeat,
            text_len=len(text),
            audio_duration_s=audio.duration_s,
            size=audio.size,
            duration_ms=round((time.perf_counter() - started) * 1000),
        )
        return audio

    def _lookup(self, key: str) -> AudioFile | None:
        """The indexed render for key if its file is still there and whole (blocking I/O)."""
        try:
            entry = json.loads((self._index / f"{key}.json").read_text(encoding="utf-8"))
            path = self.path_for(entry["sha256"])
            if path is None or path.stat().st_size != entry["size"]:
                return None
            # Used again: retention deletes audio unused for its period, by this entry's mtime
            # (the MP3's own stays the time it was written).
            os.utime(self._index / f"{key}.json")
            return AudioFile(
                sha256=entry["sha256"],
                path=path,
                format=entry["format"],
                duration_s=entry["duration_s"],
                size=entry["size"],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged entry: render again, which rewrites it

    def _store(self, key: str, mp3: Path, duration_s: float) -> AudioFile:
        """Move a finished MP3 to its content name and index it under key (blocking I/O)."""
        data = mp3.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.directory / f"{sha256}.mp3"
        if not path.is_file():
            with open(mp3, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(mp3, path)  # same filesystem (tmp/ is inside the cache): atomic
        audio = AudioFile(sha256=sha256, path=path, duration_s=duration_s, size=len(data))
        entry = {"sha256": sha256, "format": audio.format, "duration_s": duration_s, "size": audio.size}
        _atomic_write(self._index / f"{key}.json", json.dumps(entry).encode("utf-8"), self._tmp)
        return audio

    @contextlib.asynccontextmanager
    async def _key_lock(self, key: str) -> AsyncIterator[None]:
        """Hold the lock for key, so concurrent renders of one input run the engine once."""
        entry = self._locks.setdefault(key, _KeyLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]


# --- HTTP -----------------------------------------------------------------------------------

# A name's content never changes, so terminals and proxies may keep it for a year unasked.
CACHE_CONTROL = "public, max-age=31536000, immutable"


def _etag_matches(sha256: str, etags: tuple[Any, ...], *, weak: bool) -> bool:
    """Whether an If-Match (strong) or If-None-Match (weak) list names this content, or is "*"."""
    return any(e.value in ("*", sha256) for e in etags if weak or not e.is_weak)


class _ContentFileResponse(web.FileResponse):
    """A FileResponse whose ETag is the content sha256 rather than aiohttp's mtime-size tag."""

    def __init__(self, path: Path, sha256: str, **kwargs: Any) -> None:
        """Serve path as audio/mpeg with sha256 as its validator."""
        self._sha256 = sha256  # before __init__, in case it ever sets the ETag
        headers = {hdrs.CONTENT_TYPE: "audio/mpeg", hdrs.CACHE_CONTROL: CACHE_CONTROL}
        super().__init__(path, headers=headers, **kwargs)

    @property
    def etag(self) -> Any:
        """The ETag header as sent."""
        return web.StreamResponse.etag.fget(self)  # type: ignore[attr-defined]  # aiohttp types etag as an attribute, it is a property

    @etag.setter
    def etag(self, _value: Any) -> None:
        """Ignore aiohttp's mtime-size tag: the sha256 names the bytes across copies and moves."""
        web.StreamResponse.etag.fset(self, self._sha256)  # type: ignore[attr-defined]  # as above

    async def prepare(self, request: web.BaseRequest) -> Any:
        """Serve, with If-Match/If-None-Match already decided against the sha256 by the handler."""
        # aiohttp would compare them with its own mtime-size tag and answer 412 or 200 wrongly.
        headers = request.headers.copy()
        headers.popall(hdrs.IF_MATCH, None)
        headers.popall(hdrs.IF_NONE_MATCH, None)
        return await super().prepare(request.clone(headers=headers))


def _not_found(message: str) -> web.Response:
    """The API's error shape, for an audio name that is malformed or unknown."""
    body = {"error": {"code": "not_found", "message": message, "field": "sha256"}}
    return web.json_response(body, status=404)


def audio_routes(cache: AudioCache) -> list[web.RouteDef]:
    """GET/HEAD /audio/{sha256}.mp3 for terminals, with Range and ETag support."""

    async def get_audio(request: web.Request) -> web.StreamResponse:
        """Serve one cached MP3 by its content sha256."""
        name = request.match_info["name"]
        sha256 = name.removesuffix(".mp3")
        if sha256 == name or not _SHA256.fullmatch(sha256):
            return _not_found("audio names are a lowercase hex sha256 followed by .mp3")
        path = await asyncio.to_thread(cache.path_for, sha256)
        if path is None:
            return _not_found(f"no audio file {name}")
        validators = {hdrs.ETAG: f'"{sha256}"', hdrs.CACHE_CONTROL: CACHE_CONTROL}
        none_match, match = request.if_none_match, request.if_match
        if none_match is not None and _etag_matches(sha256, none_match, weak=True):
            return web.Response(status=304, headers=validators)
        if match is not None and not _etag_matches(sha256, match, weak=False):
            return web.Response(status=412, headers=validators)
        return _ContentFileResponse(path, sha256)

    # {name:.+} also catches "/" and "..", so every bad name gets the JSON 404 from the handler.
    return [web.get("/audio/{name:.+}", get_audio)]


__all__: list[str] = [
    "FORMAT_VERSION",
    "KINDS",
    "TONES",
    "AudioCache",
    "AudioError",
    "AudioFile",
    "AudioSettings",
    "alert_tone",
    "audio_routes",
]
