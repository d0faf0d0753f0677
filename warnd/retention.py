"""Retention: deliveries, acks, jobs and audio older than `[retention] days`, archived, then deleted.

A daily job (JobKind.RETENTION, due at `[retention] run_at` local time; each run plans the
next in the transaction that marks it done) takes every warning that ended (cancelled, expired,
rejected) more than `days` ago and still has deliveries or jobs that ran, one at a time:

1. its row, deliveries, acks and jobs that ran (steps, repeats, escalation rounds), read from one
   snapshot, are written as gzip JSON lines to `{archive_dir}/{year}/{warning_id}.jsonl.gz`
   through a temporary file, fsync'd, renamed and the directory fsync'd: the archive is there
   whole or not at all;
2. only then are they deleted, in one transaction that first checks they are still what the
   archive holds. The warning row and the audit log stay.

A crash between the two leaves the rows where they were and the job pending: the next run
writes the same archive again and deletes. Audio files are named by their content and shared
between warnings, so they are no warning's rows: a file neither rendered nor found in the cache
for `days` (the latest mtime of the file and its cache index entries, which AudioCache
touches when it finds one) is deleted with its index entries,
each listed first in `{archive_dir}/audio/{date}.jsonl.gz`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import structlog

from warnd.config import RetentionSettings
from warnd.store import JobKind, NewJob, Store, new_job

log = structlog.get_logger("warnd.retention")

# Warnings archived per run before the job ends and plans the next: a backlog after an upgrade
# (years of never-pruned rows) drains over a few nights instead of holding the writer for hours.
WARNINGS_PER_RUN = 200
# Work per run before the job ends and the rest goes a minute later: the scheduler fires jobs one
# at a time, and a step or an escalation due meanwhile must not wait long behind an archive.
RUN_BUDGET_S = 5.0
# Archive format: bumped if the lines change meaning (the header line carries it).
ARCHIVE_FORMAT = 1


def next_job(settings: RetentionSettings, timezone: str, now: datetime) -> NewJob:
    """The retention job due at the next `run_at` local time after now, keyed by its date."""
    local = now.astimezone(ZoneInfo(timezone))
    due = local.replace(hour=settings.run_at.hour, minute=settings.run_at.minute, second=0, microsecond=0)
    if due <= local:
        due += timedelta(days=1)  # a DST gap shifts it by the hour at worst, once a year
    return new_job(JobKind.RETENTION, f"retention:{due.date()}", None, due=due, now=now, payload={})


def archive_path(archive_dir: Path, warning_id: str) -> Path:
    """Where a warning's archive goes: by year (W20260701-… → 2026/)."""
    year = warning_id[1:5] if warning_id[1:5].isdigit() else "other"
    return archive_dir / year / f"{warning_id}.jsonl.gz"


def read_archive(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of an archive, decoded (the header first, then warning, deliveries, acks)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


class _AtomicGzip:
    """A gzip text file that appears at `path` whole and on disk, or not at all (blocking I/O)."""

    def __init__(self, path: Path) -> None:
        """Open a temporary file beside `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".gz")
        self._tmp = Path(tmp)
        self._raw = os.fdopen(fd, "wb")
        self.text: IO[str] = gzip.open(self._raw, "wt", encoding="utf-8")  # noqa: SIM115  # closed in commit/discard

    def commit(self) -> None:
        """Close, fsync, rename into place and fsync the directory: the rename is on disk too."""
        self.text.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def discard(self) -> None:
        """Drop the temporary file (a failed archive leaves nothing behind)."""
        with contextlib.suppress(OSError):
            self.text.close()
        with contextlib.suppress(OSError):
            self._raw.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


def _line(kind: str, row: dict[str, Any]) -> str:
    """One archive line: the row as stored, tagged with what it is."""
    return json.dumps({"type": kind, **row}, ensure_ascii=False, separators=(",", ":")) + "\n"


@dataclass
class RunResult:
    """What one run did (logged, and returned to tests)."""

    warnings: int = 0
    deliveries: int = 0
    acks: int = 0
    jobs: int = 0
    audio_files: int = 0
    left_for_next_run: bool = False


class Retention:
    """Archives and deletes what ended long ago.

    Args:
        store: the store.
        settings: returns the current `[retention]` settings.
        state_dir: warnd's state directory (default archive, the audio cache).
    """

    def __init__(self, store: Store, settings: Callable[[], RetentionSettings], state_dir: Path) -> None:
        """Keep the collaborators."""
        self.store, self.settings, self.state_dir = store, settings, state_dir

    def next_job(self, timezone: str, now: datetime) -> NewJob:
        """The next daily run after now (next_job with the current settings)."""
        return next_job(self.settings(), timezone, now)

    @property
    def archive_dir(self) -> Path:
        """Where archives go."""
        return self.settings().archive_dir or self.state_dir / "archive"

    async def run(self, now: datetime) -> RunResult:
        """Archive and delete warnings that ended over `days` ago (WARNINGS_PER_RUN at most), then audio."""
        cutoff = now - timedelta(days=self.settings().days)
        out = RunResult()
        ids = await self.store.ended_with_records(cutoff, WARNINGS_PER_RUN + 1)
        out.left_for_next_run = len(ids) > WARNINGS_PER_RUN
        started = time.monotonic()
        for warning_id in ids[:WARNINGS_PER_RUN]:
            if time.monotonic() - started > RUN_BUDGET_S:
                out.left_for_next_run = True
                break
            deliveries, acks, jobs = await self.archive(warning_id, now)
            if await self.store.delete_records(warning_id, deliveries=deliveries, acks=acks, jobs=jobs):
                out.warnings += 1
                out.deliveries += deliveries
                out.acks += acks
                out.jobs += jobs
                log.info(
                    "retention.archived", warning_id=warning_id, deliveries=deliveries, acks=acks, jobs=jobs
                )
            else:
                log.info("retention.changed_meanwhile", warning_id=warning_id)
        out.audio_files = await self.prune_audio(cutoff, now)
        return out

    async def archive(self, warning_id: str, now: datetime) -> tuple[int, int, int]:
        """Write a warning's archive (whole, on disk); how many deliveries, acks and jobs it holds."""
        out = await asyncio.to_thread(_AtomicGzip, archive_path(self.archive_dir, warning_id))
        try:
            # The header first: a reader knows what it holds before the rows.
            header = {"format": ARCHIVE_FORMAT, "warning_id": warning_id, "at": now.isoformat()}
            out.text.write(_line("archive", header))

            def emit(kind: str, row: dict[str, Any]) -> None:
                """One line, written in the store's reader thread as the cursor yields the row."""
                out.text.write(_line(kind, row))

            counts = await self.store.each_record(warning_id, emit)
            await asyncio.to_thread(out.commit)
        except BaseException:
            await asyncio.to_thread(out.discard)
            raise
        return counts

    async def prune_audio(self, cutoff: datetime, now: datetime) -> int:
        """Delete audio unused since `cutoff`, listing each first in the day's audio archive."""
        return await asyncio.to_thread(self._prune_audio, cutoff.timestamp(), now.astimezone(UTC).date())

    def _prune_audio(self, cutoff_ts: float, today: date) -> int:
        """prune_audio in a thread (blocking file I/O)."""
        audio = self.state_dir / "audio"
        if not audio.is_dir():
            return 0
        # Last use: the latest of the file's own mtime (rendered) and its index entries' (found
        # in the cache again: AudioCache touches the entry).
        used: dict[str, float] = {}
        entries: dict[Path, str] = {}
        for entry in (audio / "index").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                sha256 = json.loads(entry.read_text(encoding="utf-8"))["sha256"]
                entries[entry] = sha256
                used[sha256] = max(used.get(sha256, 0.0), entry.stat().st_mtime)
        old = []
        for mp3 in sorted(audio.glob("*.mp3")):
            with contextlib.suppress(OSError):
                st = mp3.stat()
                last = max(st.st_mtime, used.get(mp3.stem, 0.0))
                if last < cutoff_ts:
                    old.append((mp3, st, last))
        if not old:
            return 0
        listing = self.archive_dir / "audio" / f"{today}.jsonl.gz"
        previous = list(read_archive(listing)) if listing.exists() else []
        out = _AtomicGzip(listing)
        try:
            for line in previous:
                out.text.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
            for mp3, st, last in old:
                last_used = datetime.fromtimestamp(last, UTC).isoformat()
                out.text.write(
                    _line("audio", {"sha256": mp3.stem, "size": st.st_size, "last_used": last_used})
                )
            out.commit()
        except BaseException:
            out.discard()
            raise
        gone = {mp3.stem for mp3, _, _ in old}
        for entry, sha256 in entries.items():
            if sha256 in gone:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        for mp3, _, _ in old:
            with contextlib.suppress(FileNotFoundError):
                mp3.unlink()
        log.info("retention.audio_deleted", files=len(old))
        return len(old)
