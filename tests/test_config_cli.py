"""Config loading (TOML + WARND_ environment), `warnd check-config`, `warnd hash-token`, `warnctl`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.support.county import write_directory
from tests.support.harness import TOKENS, warning_body
from tests.support.mqtt import free_port
from tests.support.process import ROOT, DaemonProcess, write_config
from warnd.config import ConfigError, Settings, load_settings
from warnd.model import Level


def _run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m <module> …` from the repo and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`warnd …`."""
    return _run("warnd.cli", *args, env=env)


def _ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`warnctl …`."""
    return _run("warnd.ctl", *args, env=env)


def test_example_config_is_valid_and_carries_the_level_table() -> None:
    """config/warnd.toml passes check-config and spells out the defaults (docs/architecture.md)."""
    result = _cli("check-config", "--config", "config/warnd.toml")
    assert result.returncode == 0, result.stderr
    assert "5 villages" in result.stdout
    settings = load_settings(ROOT / "config" / "warnd.toml")
    assert settings.policy == Settings().policy  # the written-out policy equals the built-in defaults
    red = settings.policy.levels[Level.RED]
    assert red.repeat_min == 30 and red.quiet_hours is False and "voice" in red.channels
    assert settings.policy.levels[Level.ORANGE].repeat_min == 60
    assert "voice" not in settings.policy.levels[Level.YELLOW].channels
    assert settings.policy.levels[Level.BLUE].daytime_only == ["loudspeaker"]


def test_check_config_names_every_wrong_key(tmp_path: Path) -> None:
    """A broken file: each problem is printed with its dotted key, and the exit code is non-zero."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'state_dir = "./var"\n[http]\nport = "eighty"\nprot = 3\n[mqtt]\nurl = "http://broker"\n'
        '[[auth.tokens]]\nname = "x"\nrole = "god"\nhash = "sha256:00"\n'
        '[policy.levels.red]\nchannels = ["loudspeaker", "fax"]\n',
        encoding="utf-8",
    )
    result = _cli("check-config", "--config", str(bad))
    assert result.returncode == 1
    for key in (
        "http.port",
        "http.prot",
        "mqtt.url",
        "auth.tokens[0].role",
        "auth.tokens[0].hash",
        "policy.levels.red.channels[1]",
    ):
        assert f"  {key}: " in result.stderr, (key, result.stderr)


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("not toml [", "(file)"),
        ('[directory]\npath = "/nonexistent/directory.toml"\n', "directory"),
    ],
)
def test_check_config_unreadable_files(tmp_path: Path, content: str, key: str) -> None:
    """Invalid TOML and a missing directory file are named, not tracebacks."""
    path = tmp_path / "w.toml"
    path.write_text(content, encoding="utf-8")
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert key in result.stderr and "Traceback" not in result.stderr


def test_check_config_files_it_cannot_decode_or_open(tmp_path: Path) -> None:
    """A config saved in GBK and a directory path that is a folder: named, not tracebacks."""
    path = tmp_path / "w.toml"
    path.write_bytes('[http]\nhost = "乡镇"\n'.encode("gbk"))
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert "(file): not UTF-8 text" in result.stderr and "Traceback" not in result.stderr
    path.write_text(f'[directory]\npath = "{tmp_path}"\n', encoding="utf-8")
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert "directory.path: cannot be read" in result.stderr and "Traceback" not in result.stderr


def test_check_config_finds_directory_mistakes(tmp_path: Path) -> None:
    """A person pointing at an unknown village, and a bad phone, are named by key."""
    directory = write_directory(
        tmp_path / "d.toml",
        villages=1,
        extra='\n[[person]]\nid = "x"\nname = "某"\nphone = "13800000000"\nrole = "resident"\n'
        'villages = ["330502101999"]\n',
    )
    config = write_config(tmp_path, directory)
    result = _cli("check-config", "--config", str(config))
    assert result.returncode == 1
    assert "person[" in result.stderr and "phone" in result.stderr


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """WARND_ variables with __ nesting win over the TOML file."""
    config = write_config(tmp_path, write_directory(tmp_path / "d.toml"), port=1234)
    monkeypatch.setenv("WARND_HTTP__PORT", "9999")
    monkeypatch.setenv("WARND_HTTP__HOST", "0.0.0.0")
    monkeypatch.setenv("WARND_MQTT__URL", "mqtts://broker.example:8883")
    monkeypatch.setenv("WARND_STATE_DIR", str(tmp_path / "elsewhere"))
    s = load_settings(config)
    assert (s.http.port, s.http.host, s.mqtt.url) == (9999, "0.0.0.0", "mqtts://broker.example:8883")
    assert s.state_dir == tmp_path / "elsewhere"
    monkeypatch.setenv("WARND_HTTP__PORT", "eighty")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert err.value.problems[0][0] == "http.port"


def test_hash_token_prints_a_token_and_a_hash_that_verifies() -> None:
    """The printed hash line, pasted into a config, accepts exactly the printed token."""
    from warnd.api.auth import TokenBook
    from warnd.config import TokenSettings

    result = _cli("hash-token")
    assert result.returncode == 0
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    token = lines["token:"].strip()
    hashed = lines["hash"].split("=", 1)[1].strip().strip('"')
    book = TokenBook([TokenSettings(name="n", role="operator", hash=hashed)])
    assert book.lookup(token) is not None
    assert book.lookup(token + "x") is None


def test_warnctl_issue_list_show_cancel_against_a_real_daemon(tmp_path: Path) -> None:
    """warnctl drives a running daemon; errors name the field; no token is refused clearly."""
    port = free_port()
    config = write_config(tmp_path, write_directory(tmp_path / "d.toml", villages=2), port)
    d = DaemonProcess(["-m", "warnd.cli", "run", "--config", str(config)], port, tmp_path / "w.log").start()
    env = {"WARND_URL": d.url, "WARND_TOKEN": TOKENS["operator"]}
    try:
        body = tmp_path / "w.json"
        body.write_text(json.dumps(warning_body(), ensure_ascii=False), encoding="utf-8")
        r = _ctl("issue", "--file", str(body), env=env)
        assert r.returncode == 0, r.stderr
        wid = r.stdout.strip()
        r = _ctl(
            "issue",
            "--event",
            "山洪",
            "--level",
            "orange",
            "--headline",
            "山洪橙色预警",
            "--code",
            "330502101202",
            env=env,
        )
        assert r.returncode == 0, r.stderr
        r = _ctl("list", env=env)
        assert wid in r.stdout and "山洪" in r.stdout
        r = _ctl("show", wid, env=env)
        assert "塘甸镇气象台发布暴雨红色预警" in r.stdout and "村（社区）: 1" in r.stdout
        r = _ctl("issue", "--event", "暴雨", "--level", "red", "--headline", "x", "--code", "110101", env=env)
        assert r.returncode == 1 and "[area]" in r.stderr
        r = _ctl("cancel", wid, "--reason", "雨停", env={"WARND_URL": d.url, "WARND_TOKEN": ""})
        assert r.returncode == 1 and "WARND_TOKEN" in r.stderr
        r = _ctl("cancel", wid, "--reason", "雨停", env=env)
        assert r.returncode == 0, r.stderr
        assert "cancelled" in _ctl("show", wid, env=env).stdout
    finally:
        assert d.terminate() == 0
    log = (tmp_path / "w.log").read_text(encoding="utf-8")
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert "warnd.started" in events and "warning.accepted" in events and "warnd.stopped" in events


def test_warnctl_marks_an_exercise_unmistakably(tmp_path: Path) -> None:
    """An exercise or test warning carries 【演练】 in `warnctl list` and `show`; a real one does not."""
    port = free_port()
    config = write_config(tmp_path, write_directory(tmp_path / "d.toml", villages=1), port)
    d = DaemonProcess(["-m", "warnd.cli", "run", "--config", str(config)], port, tmp_path / "w.log").start()
    env = {"WARND_URL": d.url, "WARND_TOKEN": TOKENS["operator"]}
    try:
        # 13:00 Beijing the day after tomorrow: its T-12h step (01:00) is ahead, whenever this runs.
        beijing = datetime.now(ZoneInfo("Asia/Shanghai"))
        onset = (beijing + timedelta(days=2)).replace(hour=13, minute=0, second=0, microsecond=0)
        ids = {}
        for status in ("actual", "exercise", "test"):
            flags = ["--event", "山洪", "--level", "orange", "--code", "330502101201", "--status", status]
            flags += ["--onset", onset.isoformat()]
            r = _ctl("issue", "--headline", f"山洪橙色预警 {status}", *flags, env=env)
            assert r.returncode == 0, r.stderr
            ids[status] = r.stdout.strip()
        lines = {
            w: line for line in _ctl("list", env=env).stdout.splitlines() for w in ids.values() if w in line
        }
        assert "演练" not in lines[ids["actual"]]
        assert "【演练 exercise】" in lines[ids["exercise"]]
        assert "【演练 test】" in lines[ids["test"]]
        shown = _ctl("show", ids["exercise"], env=env).stdout.splitlines()
        assert shown[0].startswith("【演练 exercise】") and ids["exercise"] in shown[0]
        assert "不发给公众" in shown[1]
        shown = _ctl("show", ids["actual"], env=env).stdout
        assert "演练" not in shown
        # The T-12h loudspeaker play waits for the end of quiet hours, and says so.
        local_12h = (onset - timedelta(hours=7)).strftime("%Y-%m-%d %H:%M")
        assert f"T-12h  {local_12h}  大喇叭" in shown
        assert "held: quiet hours" in shown
    finally:
        assert d.terminate() == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ('"mysql://warnd@db/warnd"', "expected postgresql://"),
        ('"postgresql://warnd:hunter2@db/warnd"', "holds a password"),
    ],
)
def test_check_config_names_a_wrong_store_url(tmp_path: Path, url: str, says: str) -> None:
    """`[store] url`: another database's URL, or a password in the file, is named by its key."""
    path = tmp_path / "w.toml"
    path.write_text(f'state_dir = "./var"\n[store]\nurl = {url}\n', encoding="utf-8")
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert "  store.url: " in result.stderr and says in result.stderr, result.stderr
    assert "hunter2" not in result.stderr
