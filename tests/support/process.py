"""Run warnd as a real process: write its config, start it, wait for it, kill it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.harness import TOKENS
from tests.support.mqtt import free_port

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, directory: Path, port: int | None = None, extra: str = "") -> Path:
    """A warnd.toml for a test daemon; returns its path."""
    port = port or free_port()
    tokens = "".join(
        f'[[auth.tokens]]\nname = "{role}-1"\nrole = "{role}"\n'
        f'hash = "sha256:{hashlib.sha256(tok.encode()).hexdigest()}"\n\n'
        for role, tok in TOKENS.items()
    )
    path = tmp_path / "warnd.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n{extra}\n'
        f'[http]\nhost = "127.0.0.1"\nport = {port}\npublic_url = "http://127.0.0.1:{port}"\n\n'
        f'[directory]\npath = "{directory}"\n\n[dispatch]\ngrace_s = 2\n\n{tokens}'
        # Warnings go straight out unless a test asks for sign-off (its `extra` says [approval]).
        + ("" if "[approval]" in extra else "[approval]\nlevels = []\n"),
        encoding="utf-8",
    )
    return path


class DaemonProcess:
    """A warnd subprocess.

    Args:
        argv: the command (after the Python interpreter).
        port: its HTTP port.
        log_path: where stdout and stderr go.
        env: extra environment.
    """

    def __init__(self, argv: list[str], port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        """Remember how to start it."""
        self.argv, self.port, self.log_path = argv, port, log_path
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of its API."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20) -> DaemonProcess:
        """Start and wait until /healthz answers."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.argv], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"warnd exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=0.5):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise RuntimeError(f"warnd did not answer:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def call(
        self, method: str, path: str, body: Any = None, role: str = "operator", token: str | None = None
    ) -> tuple[int, Any]:
        """One API request, with the role's test token or the given one."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or TOKENS[role]}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
