"""`python -m tests.support.channels_daemon CONFIG CHANNEL…`: warnd with only these real channels.

A real daemon process (so tests can SIGKILL it) whose adapters are warnd's own (adapters.registry)
for the channels named, talking to whatever CONFIG points them at: loopback fakes of Twilio and
WeCom. No broker is needed unless a channel named needs one.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from adapters import registry
from warnd import log
from warnd.config import load_settings
from warnd.daemon import run


def main() -> None:
    """Run until SIGTERM/SIGKILL."""
    config, channels = Path(sys.argv[1]), sys.argv[2:]
    settings = load_settings(config)
    log.configure("info")
    classes = registry()
    asyncio.run(run(settings, config_path=config, adapters={c: classes[c] for c in channels}))


if __name__ == "__main__":
    main()
