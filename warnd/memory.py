"""The process's memory allocator, set for a daemon that runs worker threads for hours."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameter for the number of malloc arenas (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
# Arenas for warnd's threads to share. glibc gives each thread that allocates its own arena, up
# to 8 per core, and memory freed in one is kept for that arena: the store's threads, the
# planner's and the audio render's each held their own peak. A county-wide red on every channel
# peaked at 219 MB uncapped, 202–205 MB with 2 arenas and 197–200 MB with 1 (bench/peak_rss.py);
# with 1 the 10,000-speaker fan-out was no slower (3.5 s against 3.9–4.0 s with 2, same VM).
# The threads' own allocations are few and large (rows, PCM), and most work holds the GIL anyway.
ARENA_MAX = 1


def limit_malloc_arenas(arenas: int = ARENA_MAX) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX would); False where the C library is not glibc.

    Call it before the threads start: an arena a thread already has stays.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl and others: no mallopt, nothing to cap
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
