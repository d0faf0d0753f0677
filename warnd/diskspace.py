"""Whether the file system under warnd's state directory can take writes: read-only or full."""

from __future__ import annotations

import os
from pathlib import Path

# Below this much free space the disk counts as full even when a small write still fits: a
# warning's MP3 alone is hundreds of KB (its speech, written first, about a MB), SQLite grows its
# WAL page by page, and the operator should hear of it before a warning is refused, not after.
MIN_FREE_BYTES = 1024 * 1024


def disk_problem(directory: Path) -> str | None:
    """What is wrong with the file system holding directory (read-only, full), or None."""
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        return f"cannot look at {directory}: {exc.strerror}"
    if st.f_flag & os.ST_RDONLY:
        return "not writable: read-only file system"
    # root may use the blocks ext4 keeps back for it; anyone else may not.
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    if free < MIN_FREE_BYTES:
        return f"not writable: disk full ({free // 1024} KiB free)"
    return None
