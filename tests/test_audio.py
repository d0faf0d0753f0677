"""warnd.audio: real espeak-ng and ffmpeg, MP3s decoded back, a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydub import AudioSegment
from structlog.testing import capture_logs

from tests.support.wait import until
from warnd.audio import (
    TONE_GAP_MS,
    TONES,
    AudioCache,
    AudioError,
    AudioFile,
    AudioSettings,
    alert_tone,
    audio_routes,
)
from warnd.speech import pinyin_for_espeak, spoken_text

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt install espeak-ng)"
)
needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt install ffmpeg)"
)

TEXT = "气象台发布暴雨红色预警，请沿河低洼地带群众立即转移到安置点。"
RATE = 22050

# A stand-in TTS engine: `fake_tts.py MODE LOG OUTPUT [TEXT | --text-file=PATH]`, text from
# stdin when neither is given. It records its argv and the text it got, one JSON line a run.
FAKE_TTS = r"""
import json, math, os, struct, sys, time, wave

mode, log, out = sys.argv[1], sys.argv[2], sys.argv[3]
rest = sys.argv[4:]
if rest and rest[0].startswith("--text-file="):
    text = open(rest[0].split("=", 1)[1], encoding="utf-8").read()
elif rest:
    text = rest[0]
else:
    text = sys.stdin.read()
with open(log, "a", encoding="utf-8") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "text": text, "pid": os.getpid()}) + "\n")
if mode == "slow":
    time.sleep(30)
if mode == "fail":
    sys.stderr.write("loading model...\nerror: voice model zh_CN not found\n")
    sys.exit(3)
if mode == "nothing":
    sys.exit(0)
# 16 kHz on purpose: the cache must resample whatever rate an engine writes.
rate = 16000
seconds = max(0.3, 0.08 * len(text))
amp = 0 if mode == "silent" else 9000
frames = b"".join(
    struct.pack("<h", int(amp * math.sin(2 * math.pi * 440 * i / rate)))
    for i in range(int(rate * seconds))
)
with wave.open(out, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(frames)
"""


class FakeEngine:
    """The fake engine's script and run log, and command templates that call it."""

    def __init__(self, directory: Path) -> None:
        """Write the script next to its log."""
        self.script = directory / "fake_tts.py"
        self.script.write_text(FAKE_TTS, encoding="utf-8")
        self.log = directory / "runs.jsonl"

    def command(self, mode: str = "ok", args: str = "{output} {text}") -> str:
        """A tts.command template running the fake engine in mode."""
        prefix = shlex.join([sys.executable, str(self.script), mode, str(self.log)])
        return f"{prefix} {args}"

    def runs(self) -> list[dict]:
        """Every recorded run, oldest first."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def fake(tmp_path: Path) -> FakeEngine:
    """A fake TTS engine in its own directory."""
    d = tmp_path / "engine"
    d.mkdir()
    return FakeEngine(d)


def fake_cache(tmp_path: Path, fake: FakeEngine, mode: str = "ok", **settings) -> AudioCache:
    """A cache in tmp_path whose engine is the fake one."""
    return AudioCache(tmp_path / "audio", AudioSettings(command=fake.command(mode), **settings))


def decode(audio: AudioFile) -> AudioSegment:
    """The rendered MP3 decoded back to samples by ffmpeg."""
    return AudioSegment.from_file(audio.path, format="mp3")


def espeak_ms(text: str, tmp_path: Path, speed_wpm: int = 150) -> int:
    """How long espeak-ng's own rendering of text (as the pinyin warnd feeds it) is, in ms."""
    out = tmp_path / "espeak-ref.wav"
    argv = ["espeak-ng", "-v", AudioSettings().voice, "-s", str(speed_wpm), "-w", str(out), "--"]
    subprocess.run([*argv, pinyin_for_espeak(text)], check=True)
    return len(AudioSegment.from_wav(out))


def dominant_hz(seg: AudioSegment) -> float:
    """The strongest frequency in seg."""
    samples = np.array(seg.get_array_of_samples(), dtype=float)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / seg.frame_rate)[spectrum.argmax()])


def fake_speech_ms(text: str) -> int:
    """The length of the fake engine's speech for text."""
    return int(max(0.3, 0.08 * len(text)) * 1000)


# --- real audio from the built-in engine ----------------------------------------------------


@needs_espeak
@needs_ffmpeg
async def test_espeak_render_is_real_normalised_mp3(tmp_path: Path) -> None:
    """A red warning is tone + speech twice + a pause, at the target loudness, named by its hash."""
    cache = AudioCache(tmp_path / "audio", AudioSettings())
    audio = await cache.render(TEXT, "red")

    data = audio.path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == audio.sha256 == audio.path.stem
    assert audio.path == tmp_path / "audio" / f"{audio.sha256}.mp3"
    assert audio.size == len(data)
    assert audio.format == "mp3"
    assert data[:3] == b"ID3" or data[0] == 0xFF  # an MP3 frame sync or its tag

    seg = decode(audio)
    assert seg.channels == 1
    assert seg.frame_rate == RATE
    expected_ms = len(alert_tone("red")) + TONE_GAP_MS + 2 * espeak_ms(TEXT, tmp_path) + 1500
    assert abs(audio.duration_s * 1000 - expected_ms) < 100
    assert abs(len(seg) - expected_ms) < 150  # the decoder adds the encoder's frame padding
    assert seg.dBFS > -50
    assert abs(seg.dBFS - (-16.0)) < 1.5
    assert seg.max_dBFS < -0.3, "peaks must stay under full scale: the limiter, not clipping"


@needs_espeak
@needs_ffmpeg
async def test_longer_text_and_more_repeats_give_longer_audio(tmp_path: Path) -> None:
    """Duration follows the text length and the repeat count."""
    cache = AudioCache(tmp_path / "audio", AudioSettings())
    short = await cache.render("请注意。", "yellow", repeat=1)
    long = await cache.render("请注意。" + TEXT, "yellow", repeat=1)
    three = await cache.render("请注意。", "yellow", repeat=3)
    assert long.duration_s > short.duration_s + 2
    speech_s = espeak_ms("请注意。", tmp_path) / 1000
    assert three.duration_s - short.duration_s == pytest.approx(2 * (speech_s + 1.5), abs=0.05)
    assert len(decode(three)) - len(decode(short)) == pytest.approx(2000 * (speech_s + 1.5), abs=100)


@needs_espeak
@needs_ffmpeg
async def test_target_loudness_is_honoured(tmp_path: Path) -> None:
    """A quieter target gives a quieter file, at that target."""
    cache = AudioCache(tmp_path / "audio", AudioSettings(target_dbfs=-24.0))
    seg = decode(await cache.render(TEXT, "blue"))
    assert abs(seg.dBFS - (-24.0)) < 1.5


@needs_espeak
@needs_ffmpeg
async def test_text_starting_with_dash_is_spoken_not_parsed(tmp_path: Path) -> None:
    """espeak-ng gets the text after "--", so a leading "-" is not an option."""
    cache = AudioCache(tmp_path / "audio", AudioSettings())
    audio = await cache.render("-h 请注意", "blue", repeat=1)
    assert decode(audio).dBFS > -50


# --- alert tones ----------------------------------------------------------------------------


def test_every_tone_is_distinct_in_length_and_pitch() -> None:
    """The four levels, the drill marker and the all-clear differ in duration and pitch."""
    names = ["red", "orange", "yellow", "blue", "drill", "all_clear"]
    assert set(TONES) == set(names)
    tones = {n: alert_tone(n) for n in names}
    durations = {n: len(t) for n, t in tones.items()}
    assert len(set(durations.values())) == len(names), durations
    assert (
        min(abs(a - b) for i, a in enumerate(durations.values()) for b in list(durations.values())[i + 1 :])
        >= 100
    )
    pitches = {n: dominant_hz(t[:200]) for n, t in tones.items()}
    assert pitches["red"] == pytest.approx(960, abs=15)
    assert pitches["orange"] == pytest.approx(800, abs=15)
    assert pitches["yellow"] == pytest.approx(660, abs=15)
    assert pitches["blue"] == pytest.approx(880, abs=15)
    assert pitches["drill"] == pytest.approx(1200, abs=15)
    assert pitches["all_clear"] == pytest.approx(700, abs=15)
    for t in tones.values():
        assert t.channels == 1
        assert t.frame_rate == RATE
        assert t.dBFS > -20


def test_red_alternates_fast_orange_slow() -> None:
    """Red switches pitch every 250 ms, orange every 600 ms; yellow's three beeps rise."""
    red, orange, yellow = alert_tone("red"), alert_tone("orange"), alert_tone("yellow")
    assert dominant_hz(red[20:230]) == pytest.approx(960, abs=15)
    assert dominant_hz(red[270:480]) == pytest.approx(770, abs=15)
    assert dominant_hz(orange[270:480]) == pytest.approx(800, abs=15)  # still the first tone
    assert dominant_hz(orange[620:1180]) == pytest.approx(600, abs=15)
    beeps = [dominant_hz(yellow[s : s + 200]) for s in (20, 420, 820)]
    assert beeps == sorted(beeps)
    assert beeps[0] < beeps[2] - 300


def test_unknown_tone_is_an_error() -> None:
    """Asking for a tone that does not exist names the known ones."""
    with pytest.raises(ValueError, match="red"):
        alert_tone("purple")


@needs_ffmpeg
async def test_kind_selects_the_tones(tmp_path: Path, fake: FakeEngine) -> None:
    """A drill is bracketed by drill markers; an all-clear opens with the all-clear tone."""
    cache = fake_cache(tmp_path, fake, pause_ms=1000)
    text = "演练，请注意"
    speech = fake_speech_ms(text)
    warning = await cache.render(text, "orange", repeat=1)
    drill = await cache.render(text, "orange", repeat=1, kind="drill")
    clear = await cache.render(text, "orange", repeat=1, kind="all_clear")
    ms = {n: len(alert_tone(n)) for n in TONES}
    assert warning.duration_s * 1000 == pytest.approx(ms["orange"] + TONE_GAP_MS + speech, abs=5)
    assert drill.duration_s * 1000 == pytest.approx(
        2 * ms["drill"] + ms["orange"] + 3 * TONE_GAP_MS + speech, abs=5
    )
    assert clear.duration_s * 1000 == pytest.approx(ms["all_clear"] + TONE_GAP_MS + speech, abs=5)
    seg = decode(drill)
    assert dominant_hz(seg[60:160]) == pytest.approx(1200, abs=25)  # opens with the drill pips
    assert dominant_hz(seg[-160:-60]) == pytest.approx(1200, abs=25)  # and closes with them
    assert dominant_hz(decode(clear)[500:1500]) == pytest.approx(700, abs=15)
    assert len({warning.sha256, drill.sha256, clear.sha256}) == 3


# --- the cache ------------------------------------------------------------------------------


@needs_ffmpeg
async def test_same_input_is_served_from_cache_without_running_the_engine(
    tmp_path: Path, fake: FakeEngine
) -> None:
    """A second render of the same input returns the same file and runs nothing."""
    cache = fake_cache(tmp_path, fake)
    first = await cache.render("请注意", "red")
    mtime = first.path.stat().st_mtime_ns
    with capture_logs() as logs:
        again = await cache.render("请注意", "red")
    assert again == first
    assert len(fake.runs()) == 1
    assert first.path.stat().st_mtime_ns == mtime
    assert [e["event"] for e in logs] == ["audio.cache_hit"]
    assert logs[0]["sha256"] == first.sha256

    # A new cache on the same directory (warnd restarted) finds it too.
    restarted = fake_cache(tmp_path, fake)
    assert await restarted.render("请注意", "red") == first
    assert len(fake.runs()) == 1


@needs_ffmpeg
async def test_different_inputs_give_different_files(tmp_path: Path, fake: FakeEngine) -> None:
    """Level, text, repeat and kind each change the file; each is rendered."""
    cache = fake_cache(tmp_path, fake)
    files = [
        await cache.render("请注意", "red"),
        await cache.render("请注意", "orange"),
        await cache.render("请注意转移", "red"),
        await cache.render("请注意", "red", repeat=3),
        await cache.render("请注意", "red", kind="drill"),
    ]
    assert len({f.sha256 for f in files}) == len(files)
    assert len(fake.runs()) == len(files)
    assert all(f.path.is_file() for f in files)


@needs_ffmpeg
async def test_settings_are_part_of_the_key(tmp_path: Path, fake: FakeEngine) -> None:
    """Changing a setting that shapes the sound renders again instead of serving the old file."""
    first = await fake_cache(tmp_path, fake).render("请注意", "red")
    louder = await fake_cache(tmp_path, fake, target_dbfs=-12.0).render("请注意", "red")
    assert louder.sha256 != first.sha256
    assert len(fake.runs()) == 2


@needs_ffmpeg
async def test_concurrent_renders_of_one_input_run_the_engine_once(tmp_path: Path, fake: FakeEngine) -> None:
    """Five simultaneous requests for one warning share one rendering."""
    cache = fake_cache(tmp_path, fake)
    results = await asyncio.gather(*(cache.render("请注意", "red") for _ in range(5)))
    assert len(set(results)) == 1
    assert len(fake.runs()) == 1
    assert cache._locks == {}  # per-key locks are dropped when nobody uses them


@needs_ffmpeg
async def test_deleted_file_is_rendered_again(tmp_path: Path, fake: FakeEngine) -> None:
    """An index entry whose MP3 vanished is a miss, not a broken AudioFile."""
    cache = fake_cache(tmp_path, fake)
    first = await cache.render("请注意", "red")
    first.path.unlink()
    again = await cache.render("请注意", "red")
    assert again.path.is_file()
    assert again.sha256 == first.sha256  # same input, same bytes: encoding is deterministic
    assert len(fake.runs()) == 2


@needs_ffmpeg
async def test_no_temporary_files_are_left_behind(tmp_path: Path, fake: FakeEngine) -> None:
    """Renders and failures both clean up their work directories."""
    cache = fake_cache(tmp_path, fake)
    await cache.render("请注意", "red")
    failing = AudioCache(tmp_path / "audio", AudioSettings(command=fake.command("fail")))
    with pytest.raises(AudioError):
        await failing.render("请注意", "blue")
    leftovers = [p for p in (tmp_path / "audio").rglob("*") if p.is_file()]
    assert sorted(p.suffix for p in leftovers) == [".json", ".mp3"]


def test_stale_work_directories_are_swept_at_start(tmp_path: Path) -> None:
    """What a crash left in tmp/ goes; a render in progress elsewhere (young) stays."""
    tmp = tmp_path / "audio" / "tmp"
    (tmp / "old").mkdir(parents=True)
    (tmp / "old" / "speech.wav").write_bytes(b"x")
    (tmp / "young").mkdir()
    (tmp / "write-half").write_bytes(b"{")
    two_hours_ago = time.time() - 7200
    os.utime(tmp / "old", (two_hours_ago, two_hours_ago))
    os.utime(tmp / "write-half", (two_hours_ago, two_hours_ago))
    AudioCache(tmp_path / "audio", AudioSettings())
    assert sorted(p.name for p in tmp.iterdir()) == ["young"]


def test_path_for_checks_the_name_before_the_filesystem(tmp_path: Path) -> None:
    """Only 64 lowercase hex characters name a file; anything else is None."""
    cache = AudioCache(tmp_path / "audio", AudioSettings())
    sha = hashlib.sha256(b"x").hexdigest()
    (tmp_path / "audio" / f"{sha}.mp3").write_bytes(b"x")
    (tmp_path / "secret.mp3").write_bytes(b"x")
    assert cache.path_for(sha) == tmp_path / "audio" / f"{sha}.mp3"
    for bad in [
        "../secret",
        "../../etc/passwd",
        sha.upper(),
        sha[:-1],
        sha + "0",
        "g" * 64,
        f"{sha}\n",
        "",
        "/" + sha[1:],
    ]:
        assert cache.path_for(bad) is None, bad
    assert cache.path_for("0" * 64) is None  # well-formed but absent


async def test_bad_arguments_are_rejected_before_any_work(tmp_path: Path, fake: FakeEngine) -> None:
    """A bad level, kind, repeat or text is a ValueError, and the engine never runs."""
    cache = fake_cache(tmp_path, fake)
    with pytest.raises(ValueError, match="purple"):
        await cache.render("请注意", "purple")
    with pytest.raises(ValueError, match="kind"):
        await cache.render("请注意", "red", kind="exercise")
    with pytest.raises(ValueError, match="repeat"):
        await cache.render("请注意", "red", repeat=0)
    with pytest.raises(ValueError, match="empty"):
        await cache.render("  \n", "red")
    with pytest.raises(ValueError, match="NUL"):
        await cache.render("a\x00b", "red")
    assert fake.runs() == []


# --- the command template -------------------------------------------------------------------


@needs_ffmpeg
async def test_command_text_is_one_argument_and_no_shell_runs(tmp_path: Path, fake: FakeEngine) -> None:
    """Spaces, quotes, $vars, backticks, `; rm -rf /` and even "{output}" arrive verbatim."""
    canary = tmp_path / "canary"
    text = (
        f"请注意 转移; rm -rf / && touch {canary} | echo $HOME `id` $(id) 'single' \"double\""
        " {output} {text_file} \\ *"
    )
    cache = fake_cache(tmp_path, fake)
    audio = await cache.render(text, "red")
    (run,) = fake.runs()
    assert run["argv"][3] == spoken_text(text)  # verbatim but for tmp_path's digits, as words
    assert len(run["argv"]) == 4
    assert run["argv"][2].endswith("speech.wav")
    assert not canary.exists()
    assert audio.duration_s * 1000 == pytest.approx(
        len(alert_tone("red")) + TONE_GAP_MS + 2 * fake_speech_ms(spoken_text(text)) + 1500, abs=5
    )


@needs_ffmpeg
async def test_command_placeholders_inside_arguments_and_text_file(tmp_path: Path, fake: FakeEngine) -> None:
    """{output} works inside an option and {text_file} hands the text over in a UTF-8 file."""
    text = "山洪预警：请立即转移 --help"
    settings = AudioSettings(command=fake.command(args="{output} --text-file={text_file}"))
    await AudioCache(tmp_path / "audio", settings).render(text, "yellow")
    (run,) = fake.runs()
    assert run["text"] == text
    assert run["argv"][3].startswith("--text-file=")
    assert run["argv"][3].endswith("text.txt")


@needs_ffmpeg
async def test_command_without_text_placeholder_reads_stdin(tmp_path: Path, fake: FakeEngine) -> None:
    """Engines like piper read the text on stdin when the template has no {text}."""
    text = "请注意；$(reboot)"
    settings = AudioSettings(command=fake.command(args="{output}"))
    await AudioCache(tmp_path / "audio", settings).render(text, "blue")
    (run,) = fake.runs()
    assert run["text"] == text
    assert len(run["argv"]) == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"command": "piper --model zh_CN {text}"}, "{output}"),
        ({"command": "piper --text 'unbalanced {output}"}, "split"),
        ({"command": "   "}, "program"),
        ({"sample_rate_hz": 22000}, "22050"),
        ({"speed": 150}, "extra"),
        ({"repeat": 0}, "repeat"),
        ({"bitrate": "64kbps"}, "bitrate"),
        ({"target_dbfs": -6.0}, "target_dbfs"),
    ],
)
def test_settings_are_validated(settings: dict, message: str) -> None:
    """A wrong setting is named when the config is loaded, not when a warning is due."""
    with pytest.raises(pydantic.ValidationError, match=message):
        AudioSettings(**settings)


def test_settings_defaults() -> None:
    """The documented defaults: espeak-ng Mandarin, twice, -16 dBFS, 64k MP3 at 22.05 kHz."""
    s = AudioSettings()
    assert (s.command, s.voice, s.speed_wpm, s.repeat, s.pause_ms) == (None, "cmn-latn-pinyin", 150, 2, 1500)
    assert (s.target_dbfs, s.bitrate, s.sample_rate_hz, s.timeout_s) == (-16.0, "64k", 22050, 60)


# --- failures -------------------------------------------------------------------------------


async def test_failing_engine_raises_with_its_stderr(tmp_path: Path, fake: FakeEngine) -> None:
    """The error names the engine, its exit status and the end of its stderr."""
    cache = fake_cache(tmp_path, fake, "fail")
    with pytest.raises(AudioError) as caught:
        await cache.render("请注意", "red")
    message = str(caught.value)
    assert Path(sys.executable).name in message
    assert "exit 3" in message
    assert "voice model zh_CN not found" in message


async def test_missing_engine_is_named(tmp_path: Path) -> None:
    """A command whose program does not exist says which program."""
    settings = AudioSettings(command="/nonexistent/bin/piper --output_file {output} {text}")
    with pytest.raises(AudioError, match=r"piper.*not found"):
        await AudioCache(tmp_path / "audio", settings).render("请注意", "red")


async def test_engine_timeout_is_enforced_and_the_engine_killed(tmp_path: Path, fake: FakeEngine) -> None:
    """A hung engine is killed at timeout_s and reported as timed out."""
    cache = fake_cache(tmp_path, fake, "slow", timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(AudioError, match=r"timed out after 0\.5 s"):
        await cache.render("请注意", "red")
    assert time.monotonic() - started < 10
    (run,) = fake.runs()
    with pytest.raises(ProcessLookupError):
        os.kill(run["pid"], 0)


async def test_a_render_cancelled_at_shutdown_kills_the_engine_and_ends_at_once(
    tmp_path: Path, fake: FakeEngine
) -> None:
    """warnd stopping while an engine hangs: the render ends within a second, the engine is dead.

    A cancelled render kills the engine's process group and waits at most KILL_WAIT_S for it (an
    unbounded wait there once hung warnd's shutdown).
    """
    cache = fake_cache(tmp_path, fake, "slow", timeout_s=60)
    render = asyncio.create_task(cache.render("请注意", "red"))
    await until(fake.runs, 10, what="the engine started")
    started = time.monotonic()
    render.cancel()
    with pytest.raises(asyncio.CancelledError):
        await render
    (run,) = fake.runs()

    def gone() -> bool:
        """Whether the engine process has ended."""
        try:
            os.kill(run["pid"], 0)
        except ProcessLookupError:
            return True
        return False

    await until(gone, 2, what="the engine killed")
    assert time.monotonic() - started < 2


async def test_engine_that_writes_nothing_or_silence_fails(tmp_path: Path, fake: FakeEngine) -> None:
    """Exit 0 is not enough: there must be audio, and it must not be silence."""
    with pytest.raises(AudioError, match="wrote no audio"):
        await fake_cache(tmp_path, fake, "nothing").render("请注意", "red")
    with pytest.raises(AudioError, match="silence"):
        await fake_cache(tmp_path, fake, "silent").render("请注意", "red")


@needs_ffmpeg
async def test_logs_carry_sizes_and_timings_not_the_text(tmp_path: Path, fake: FakeEngine) -> None:
    """audio.rendered has sha256, durations and text_len; the text is only in debug events."""
    cache = fake_cache(tmp_path, fake)
    with capture_logs() as logs:
        audio = await cache.render(TEXT, "red")
    (rendered,) = [e for e in logs if e["event"] == "audio.rendered"]
    assert rendered["sha256"] == audio.sha256
    assert rendered["text_len"] == len(TEXT)
    assert rendered["audio_duration_s"] == audio.duration_s
    assert isinstance(rendered["duration_ms"], int)
    for event in logs:
        if event["log_level"] != "debug":
            assert TEXT not in json.dumps(event, ensure_ascii=False, default=str)


def test_audio_file_payload_matches_the_mqtt_contract(tmp_path: Path) -> None:
    """The play command's audio object: url, sha256, format, duration_s."""
    sha = "a" * 64
    audio = AudioFile(sha256=sha, path=tmp_path / f"{sha}.mp3", duration_s=12.5, size=100)
    assert audio.payload("http://10.0.0.2:8080/") == {
        "url": f"http://10.0.0.2:8080/audio/{sha}.mp3",
        "sha256": sha,
        "format": "mp3",
        "duration_s": 12.5,
    }


# --- HTTP -----------------------------------------------------------------------------------


@pytest.fixture
async def served(tmp_path: Path, fake: FakeEngine):
    """A rendered file and a client of a loopback server serving the cache."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt install ffmpeg)")
    cache = fake_cache(tmp_path, fake)
    audio = await cache.render("请注意", "red")
    app = web.Application()
    app.add_routes(audio_routes(cache))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, audio


async def test_http_get_serves_the_bytes_with_immutable_headers(served) -> None:
    """GET returns the file with its sha256 as ETag, audio/mpeg and a one-year immutable cache."""
    client, audio = served
    resp = await client.get(f"/audio/{audio.sha256}.mp3")
    assert resp.status == 200
    body = await resp.read()
    assert body == audio.path.read_bytes()
    assert hashlib.sha256(body).hexdigest() == audio.sha256
    assert resp.headers["Content-Type"] == "audio/mpeg"
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert resp.headers["ETag"] == f'"{audio.sha256}"'
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert int(resp.headers["Content-Length"]) == audio.size

    head = await client.head(f"/audio/{audio.sha256}.mp3")
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == audio.size
    assert head.headers["ETag"] == f'"{audio.sha256}"'
    assert await head.read() == b""


async def test_http_range_returns_206_with_the_slice(served) -> None:
    """Range: bytes=0-99 gives exactly the first 100 bytes."""
    client, audio = served
    resp = await client.get(f"/audio/{audio.sha256}.mp3", headers={"Range": "bytes=0-99"})
    assert resp.status == 206
    body = await resp.read()
    assert body == audio.path.read_bytes()[:100]
    assert resp.headers["Content-Range"] == f"bytes 0-99/{audio.size}"
    assert resp.headers["ETag"] == f'"{audio.sha256}"'


async def test_http_conditional_requests_use_the_sha256(served) -> None:
    """If-None-Match with the ETag is 304; If-Match with it serves; a wrong If-Match is 412."""
    client, audio = served
    url = f"/audio/{audio.sha256}.mp3"
    etag = f'"{audio.sha256}"'
    resp = await client.get(url, headers={"If-None-Match": etag})
    assert resp.status == 304
    assert resp.headers["ETag"] == etag
    assert await resp.read() == b""
    resp = await client.get(url, headers={"If-None-Match": f'"{"0" * 64}"'})
    assert resp.status == 200
    resp = await client.get(url, headers={"If-Match": etag, "Range": "bytes=100-199"})
    assert resp.status == 206
    assert await resp.read() == audio.path.read_bytes()[100:200]
    resp = await client.get(url, headers={"If-Match": f'"{"0" * 64}"'})
    assert resp.status == 412
    # If-None-Match compares weakly, If-Match strongly (RFC 9110 13.1.1/13.1.2).
    resp = await client.get(url, headers={"If-None-Match": f"W/{etag}"})
    assert resp.status == 304
    resp = await client.get(url, headers={"If-Match": f"W/{etag}"})
    assert resp.status == 412


async def test_http_unknown_or_malformed_names_are_json_404(served) -> None:
    """An unknown sha256, a non-hex name, a wrong suffix and encoded traversal all get 404 JSON."""
    client, audio = served
    for path in [
        f"/audio/{'0' * 64}.mp3",
        "/audio/not-a-hash.mp3",
        f"/audio/{audio.sha256.upper()}.mp3",
        f"/audio/{audio.sha256}.wav",
        f"/audio/{audio.sha256}",
        "/audio/..%2F..%2Fetc%2Fpasswd.mp3",
    ]:
        resp = await client.get(path)
        assert resp.status == 404, path
        error = (await resp.json())["error"]
        assert error["code"] == "not_found"
        assert error["field"] == "sha256"
        assert error["message"]


async def test_http_raw_traversal_path_is_404(served) -> None:
    """/audio/../../etc/passwd.mp3 sent byte for byte (no client normalisation) is a 404."""
    client, _ = served
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /audio/../../etc/passwd.mp3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert response.startswith(b"HTTP/1.1 404"), response[:200]
    assert b"root:" not in response
