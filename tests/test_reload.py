"""`systemctl reload` (SIGHUP) on a real warnd process: directory, policy and tokens change in place."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path
from typing import Any

from tests.support.county import write_directory
from tests.support.harness import TOKENS, warning_body
from tests.support.mqtt import free_port
from tests.support.process import DaemonProcess, write_config
from warnd.directory import Directory

ROTATED = "rotated-viewer-token-0123456789"
NEW_VILLAGE = "330502101203"


def _call(
    d: DaemonProcess, token: str, method: str = "GET", path: str = "/api/v1/warnings", body: Any = None
) -> int:
    """Status of one API request made with this token."""
    return d.call(method, path, body, token=token)[0]


def _reload(d: DaemonProcess, log: Path, event: str) -> str:
    """SIGHUP, then wait for the log line saying how the reload went; returns that line."""
    before = log.read_text(encoding="utf-8").count(event)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if event in ln]
        if len(lines) > before:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {event} after SIGHUP:\n{log.read_text(encoding='utf-8')[-2000:]}")


def test_reload_revokes_and_adds_tokens_and_takes_the_new_directory(tmp_path: Path) -> None:
    """A removed token is refused at once, a new one works, a new village can be warned.

    A file with errors changes nothing.
    """
    port = free_port()
    config = write_config(tmp_path, write_directory(tmp_path / "d.toml", villages=2), port)
    log = tmp_path / "w.log"
    d = DaemonProcess(["-m", "warnd.cli", "run", "--config", str(config)], port, log).start()
    body = warning_body(area={"codes": [NEW_VILLAGE]})
    try:
        assert _call(d, TOKENS["operator"]) == 200
        assert _call(d, ROTATED) == 401
        assert _call(d, TOKENS["operator"], "POST", body=body) == 422  # not a village yet

        # The operator token leaked: drop it, hand out a new viewer token, add a village.
        text = config.read_text(encoding="utf-8")
        start = text.index('[[auth.tokens]]\nname = "operator-1"')
        end = text.index("[[auth.tokens]]", start + 1)
        rotated = hashlib.sha256(ROTATED.encode()).hexdigest()
        text = (
            text[:start]
            + text[end:]
            + f'[[auth.tokens]]\nname = "viewer-2"\nrole = "viewer"\nhash = "sha256:{rotated}"\n'
        )
        config.write_text(text, encoding="utf-8")
        villages = len(Directory.load(write_directory(tmp_path / "d.toml", villages=3)).villages)
        line = json.loads(_reload(d, log, "config.reloaded"))
        assert (line["villages"], line["tokens"]) == (villages, len(TOKENS))

        assert _call(d, TOKENS["operator"]) == 401
        assert _call(d, ROTATED) == 200
        assert _call(d, ROTATED, "POST", body=body) == 403  # a viewer may not issue
        assert _call(d, TOKENS["admin"], "POST", body=body) == 202  # the new village is known

        # A broken file is refused whole: the tokens and directory in force stay.
        config.write_text(text.replace("grace_s = 2", 'grace_s = "soon"'), encoding="utf-8")
        line = json.loads(_reload(d, log, "config.reload_failed"))
        assert "dispatch" in json.dumps(line["problems"])
        assert _call(d, ROTATED) == 200
        assert _call(d, TOKENS["operator"]) == 401
        # Saved in another encoding: refused with a reason, not a traceback out of the signal handler.
        config.write_bytes(text.encode("utf-8").replace(b"viewer-2", "观察员".encode("gbk")))
        line = json.loads(_reload(d, log, "config.reload_failed"))
        assert "not UTF-8" in json.dumps(line["problems"], ensure_ascii=False)
        assert _call(d, ROTATED) == 200
        assert d.terminate() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()
