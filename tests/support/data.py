"""The documents tests read: real CAP alerts and hostile inputs under tests/data/ (see its SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

# Inside the repository, so a plain clone runs every test; nothing is read from outside it.
DATA = Path(__file__).resolve().parents[1] / "data"


def read(name: str) -> bytes:
    """A test document's bytes, by its path under tests/data/ ("cap/intl/…", "malformed/…")."""
    return (DATA / name).read_bytes()
