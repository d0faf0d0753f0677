"""`systemctl reload` (SIGHUP) on a real warnd process: directory, policy and tokens change in place."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.county import write_directory
from tests.support.harness import TOKENS, warning_body
from tests.support.mqtt import free_port
from tests.support.process import DaemonProcess, write_config
from tests.support.wait import wait_for
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

    def lines() -> list[str]:
        return [ln for ln in log.read_text(encoding="utf-8").splitlines() if event in ln]

    return wait_for(lambda: len(lines()) > before and lines(), 15, f"{event} after SIGHUP", 0.05)[-1]


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


def _notifications(sock: socket.socket, count: int, within_s: float = 15) -> list[str]:
    """The next `count` datagrams on the notify socket, each as one string."""
    out = []
    deadline = time.monotonic() + within_s
    while len(out) < count:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        out.append(sock.recv(4096).decode())
    return out


def _nth(log: Path, event: str, n: int) -> dict[str, Any]:
    """The n-th log line of an event (1-based), waiting for it to be written."""

    def lines() -> list[str]:
        return [ln for ln in log.read_text(encoding="utf-8").splitlines() if f'"{event}"' in ln]

    found = wait_for(lambda: len(lines()) >= n and lines(), 15, f"{event} #{n} in the log", 0.05)
    return json.loads(found[n - 1])


def _reload_failures(d: DaemonProcess) -> float:
    """warnd_config_reload_failures_total as /metrics shows it."""
    with urllib.request.urlopen(d.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return float(re.search(r"^warnd_config_reload_failures_total (\S+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]


def test_a_failed_reload_is_visible_in_status_log_and_metrics(tmp_path: Path) -> None:
    """A broken warnd.toml, then a broken directory: STATUS names file, key and message beside READY=1.

    The log line names `file` and `key`, the counter counts; the old config stays in force, and
    a good reload afterwards says so in STATUS, the counter unchanged.
    """
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    port = free_port()
    directory = write_directory(tmp_path / "d.toml", villages=2)
    config = write_config(tmp_path, directory, port)
    log = tmp_path / "w.log"
    d = DaemonProcess(
        ["-m", "warnd.cli", "run", "--config", str(config)], port, log, env={"NOTIFY_SOCKET": str(notify)}
    )
    try:
        d.start()
        assert _notifications(sock, 1) == ["READY=1"]
        good_config, good_directory = (
            config.read_text(encoding="utf-8"),
            directory.read_text(encoding="utf-8"),
        )

        config.write_text(good_config.replace("grace_s = 2", 'grace_s = "soon"'), encoding="utf-8")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        reloading, done = _notifications(sock, 2)
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        prefix = f"READY=1\nSTATUS=reload failed: {config}: dispatch.grace_s: Input should be a valid number"
        assert done.startswith(prefix), done
        assert done.endswith("; the old config stays")
        line = _nth(log, "config.reload_failed", 1)
        assert (line["file"], line["key"]) == (str(config), "dispatch.grace_s")
        assert _reload_failures(d) == 1

        # The config is fixed, the directory now has a village code that is no code.
        config.write_text(good_config, encoding="utf-8")
        directory.write_text(
            good_directory.replace('code = "330502101201"', 'code = "3305"', 1), encoding="utf-8"
        )
        d.proc.send_signal(signal.SIGHUP)
        _, done = _notifications(sock, 2)
        assert done.startswith(f"READY=1\nSTATUS=reload failed: {directory}: village[0].code: "), done
        line = _nth(log, "config.reload_failed", 2)
        assert (line["file"], line["key"]) == (str(directory), "village[0].code")
        # Not TOML at all: the file is named, there is no key.
        directory.write_text("[[village]\n", encoding="utf-8")
        d.proc.send_signal(signal.SIGHUP)
        _, done = _notifications(sock, 2)
        assert done.startswith(f"READY=1\nSTATUS=reload failed: {directory}: not valid TOML"), done
        line = _nth(log, "config.reload_failed", 3)
        assert (line["file"], line["key"]) == (str(directory), None)
        assert _reload_failures(d) == 3
        # The old directory is still in force: its villages can be warned.
        assert d.call("POST", "/api/v1/warnings", warning_body())[0] == 202

        directory.write_text(good_directory, encoding="utf-8")
        d.proc.send_signal(signal.SIGHUP)
        _, done = _notifications(sock, 2)
        assert done.startswith("READY=1\nSTATUS=config reloaded: 3 villages"), done
        assert _reload_failures(d) == 3
        assert d.terminate() == 0
    finally:
        sock.close()
        if d.proc is not None and d.proc.poll() is None:
            d.kill()
