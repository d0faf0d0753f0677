"""warnd caps glibc's malloc arenas: its threads share one instead of one each (warnd.memory)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Eight threads, alive at once, each making allocations malloc serves from an arena (10 kB:
# above Python's small-object allocator, below the mmap threshold); then glibc's own report.
PROBE = """
import ctypes, sys, threading
from warnd.memory import limit_malloc_arenas
if sys.argv[1] == "capped":
    assert limit_malloc_arenas()
barrier = threading.Barrier(9)  # the eight and this thread
def work():
    kept = [bytes(10_000) for _ in range(50)]
    barrier.wait()
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
barrier.wait()
ctypes.CDLL("libc.so.6").malloc_stats()
barrier.wait()
for t in threads:
    t.join()
"""


def arenas(mode: str) -> int:
    """How many arenas glibc reports in a process whose eight threads allocate at once."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return sum(line.startswith("Arena ") for line in out.stderr.splitlines())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_threads_share_one_arena_once_capped() -> None:
    """Uncapped, the threads take arenas of their own; capped, they share the main one."""
    assert arenas("uncapped") > 2
    assert arenas("capped") == 1
