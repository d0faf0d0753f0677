"""`python -m tests.support.recording_daemon CONFIG RECORD_FILE [DELAY_S]`: warnd with recording adapters.

A real daemon process (so tests can SIGKILL it) whose channels write every send to RECORD_FILE.
"""

from __future__ import annotations

import asyncio
import sys
from functools import partial
from pathlib import Path

from tests.support.recording import RecordingAdapter
from warnd import log
from warnd.config import load_settings
from warnd.daemon import run

CHANNELS = ("loudspeaker", "sms", "voice", "wechat", "led")


def main() -> None:
    """Run until SIGTERM/SIGKILL."""
    config, record = Path(sys.argv[1]), Path(sys.argv[2])
    delay_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    settings = load_settings(config)
    log.configure("info")
    factories = {ch: partial(RecordingAdapter, channel=ch, path=record, delay_s=delay_s) for ch in CHANNELS}
    asyncio.run(run(settings, config_path=config, adapters=factories))


if __name__ == "__main__":
    main()
