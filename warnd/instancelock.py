"""One warnd per state directory: an exclusive flock on `{state_dir}/warnd.lock` for the process's life.

Two daemons on one state directory would share one SQLite file and, worse, one MQTT client id:
the broker would disconnect each in turn for the other, forever. The second one exits at once.

flock, not a pid file: the kernel drops the lock when the holder dies, however it dies (SIGKILL,
power loss), so a stale file never keeps warnd from starting. The pid written into the file is
only for the message the second instance prints. The file is never removed: unlinking it while
another process waits on it would let a third lock a new file beside the held one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "warnd.lock"


class AlreadyRunning(Exception):
    """Another process holds the state directory's lock.

    Args:
        path: the lock file.
        pid: the holder's pid as it wrote it, or None if it could not be read.
    """

    def __init__(self, path: Path, pid: int | None) -> None:
        """Say who holds what."""
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"another warnd ({holder}) holds {path}")
        self.path, self.pid = path, pid


def _holder(fd: int) -> int | None:
    """The pid the lock's holder wrote, if it has yet."""
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    return None


@contextlib.contextmanager
def instance_lock(state_dir: Path) -> Iterator[Path]:
    """Hold `{state_dir}/warnd.lock` exclusively until the block ends; AlreadyRunning if taken."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    # O_CLOEXEC: a child (espeak-ng, ffmpeg) that inherited the descriptor would hold the lock
    # after warnd died, and keep the restarted warnd out.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(path, _holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
