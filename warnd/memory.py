"""The process's memory allocator, set for a daemon that runs worker threads for hours."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameter for the number of malloc arenas (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
# Arenas for warnd's threads to share. glibc gives each thread that allocates its own arena, up
# to 8 per core, and memory freed in one is kept for that arena: the store's threads, the
# planner's and the audio render's each held their own peak. With 2, a county-wide red on every
# channel peaked at 202 MB instead of 219 (bench/peak_rss.py); the threads' allocations are
# few and large (rows, PCM), so they seldom wait for an arena's lock.
ARENA_MAX = 2


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
