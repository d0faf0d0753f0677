"""`python -m tests.support.twilio_daemon CONFIG`: warnd with only its real SMS and voice channels.

A real daemon process (so tests can SIGKILL it) whose Twilio adapters talk to the `[twilio]
api_base` of CONFIG, a FakeTwilio on loopback; no broker and no WeCom are needed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from adapters.sms import SmsAdapter
from adapters.voice import VoiceAdapter
from warnd import log
from warnd.config import load_settings
from warnd.daemon import run


def main() -> None:
    """Run until SIGTERM/SIGKILL."""
    config = Path(sys.argv[1])
    settings = load_settings(config)
    log.configure("info")
    asyncio.run(run(settings, config_path=config, adapters={"sms": SmsAdapter, "voice": VoiceAdapter}))


if __name__ == "__main__":
    main()
