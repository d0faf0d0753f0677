"""A whole township on this machine: warnd as a process over a real Mosquitto, with the speaker
simulator (`warnctl simulate-speakers`) playing and confirming for every village's devices."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.county import write_directory
from tests.support.mqtt import Broker, free_port
from tests.support.process import ROOT, DaemonProcess, write_config
from tests.support.wait import wait_for

VILLAGES = ("330502101201", "330502101202")
# Two villages with two speakers and a board each, and the directory's test village (one each).
DEVICES = 7
SIGN_OFF = '[approval]\nlevels = ["red", "orange", "yellow", "blue"]\n'


def online(daemon: DaemonProcess) -> int:
    """How many devices of the directory say they are online."""
    status, body = daemon.call("GET", "/api/v1/devices", role="viewer")
    return sum(d["state"] == "online" for d in body["devices"]) if status == 200 else 0


@contextmanager
def township(tmp_path: Path, broker: Broker, *, sign_off: bool = True) -> Iterator[DaemonProcess]:
    """warnd (sign-off on unless asked), loudspeakers and LED boards over the broker, simulated."""
    directory = write_directory(tmp_path / "directory.toml", villages=2, speakers=2, leds=1)
    port = free_port()
    extra = f'[mqtt]\nurl = "{broker.url}"\n\n[wecom]\nenabled = false\n\n'
    config = write_config(tmp_path, directory, port, extra=extra + (SIGN_OFF if sign_off else ""))
    daemon = DaemonProcess(["-m", "warnd.cli", "run", "--config", str(config)], port, tmp_path / "warnd.log")
    daemon.start()
    argv = ["simulate-speakers", "--broker", broker.url, "--directory", str(directory)]
    sim_log = (tmp_path / "simulator.log").open("ab")
    simulator = subprocess.Popen(
        [sys.executable, "-m", "warnd.ctl", *argv, "--village", *VILLAGES, "330502101299"],
        cwd=ROOT,
        stdout=sim_log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: online(daemon) >= DEVICES, 30, "simulated speakers and boards online")
        yield daemon
    finally:
        simulator.terminate()
        simulator.wait(10)
        sim_log.close()
        assert daemon.terminate() == 0
