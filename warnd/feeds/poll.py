"""Polled feeds: an HTTP URL giving one CAP document, or an Atom/RSS index of links to CAP.

Each poll is a conditional GET (If-None-Match / If-Modified-Since from the last answer, kept in
the store so a restart does not refetch); a 304 costs nothing. Index entries are fetched once:
an entry is remembered after it was taken or refused for good, and only a transient failure
leaves it to be fetched again. While the upstream fails the interval doubles up to
`max_backoff_s` (with jitter), and a success brings it back to `interval_s`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp
import structlog

from warnd.backoff import backoff_s
from warnd.cap import CAP_VERSIONS, CapError, parse_xml
from warnd.intake import Actor, InputError

if TYPE_CHECKING:
    from warnd.config import FeedSettings
    from warnd.feeds import Feeds

log = structlog.get_logger("warnd.feeds")

ATOM_NS = "http://www.w3.org/2005/Atom"
# An index of a few hundred entries is tens of KB; a national Atom feed can reach a few MB.
MAX_INDEX_BYTES = 8 * 1024 * 1024
# Upstream answers within seconds or is down; a hung connection must not stall the loop.
FETCH_TIMEOUT_S = 30.0


class FetchError(Exception):
    """An upstream answer that was not usable now (network, 5xx, too large): try again later."""


def poll_delay_s(failures: int, interval_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Delay before the next poll after `failures` failures in a row: the interval, doubling while failing.

    The backoff's jitter takes up to half off so that pollers restarted together drift apart.
    """
    if failures <= 0:
        return interval_s
    return backoff_s(failures + 1, interval_s, cap_s, rng)  # the first failure already doubles


@dataclass
class PollReport:
    """What one poll did."""

    not_modified: bool = False
    fetched: list[str] = field(default_factory=list)
    results: int = 0
    refused: int = 0


def _local(tag: str) -> tuple[str, str]:
    """(namespace, local name) of an ElementTree tag."""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def index_links(data: bytes, base_url: str) -> list[str] | None:
    """The CAP links of an Atom or RSS index, absolute, in order; None if the body is not an index."""
    root = parse_xml(data, max_bytes=MAX_INDEX_BYTES)
    ns, local = _local(root.tag)
    links: list[str] = []
    if (ns, local) == (ATOM_NS, "feed"):
        for entry in root.iter(f"{{{ATOM_NS}}}entry"):
            chosen = None
            for link in entry.iter(f"{{{ATOM_NS}}}link"):
                kind = (link.get("type") or "").lower()
                if link.get("href") and (
                    "cap" in kind or kind.endswith("xml") or link.get("rel") == "enclosure"
                ):
                    chosen = link.get("href")
                    break
            if chosen:
                links.append(urljoin(base_url, chosen.strip()))
        return links
    if local == "rss":
        for item in root.iter("item"):
            enclosure = item.find("enclosure")
            href = enclosure.get("url") if enclosure is not None else None
            if not href:
                link_el = item.find("link")
                href = link_el.text if link_el is not None else None
            if href:
                links.append(urljoin(base_url, href.strip()))
        return links
    return None


def is_cap(data: bytes) -> bool:
    """Whether a body is a CAP alert (or an <alerts> wrapper) rather than an index."""
    root = parse_xml(data, max_bytes=MAX_INDEX_BYTES)
    ns, _local_name = _local(root.tag)
    return ns in CAP_VERSIONS


class Poller:
    """One polled feed.

    Args:
        feeds: the daemon's feeds.
        settings: the feed's `[[feed]]` entry (kind = "poll").
    """

    def __init__(self, feeds: Feeds, settings: FeedSettings) -> None:
        """Start with no failures."""
        self.feeds = feeds
        self.settings = settings
        self.name = settings.name
        self.failures = 0
        self.next_delay_s = settings.interval_s
        self.actor = Actor(f"feed:{settings.name}", settings.url)

    async def _get(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str], limit: int
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """GET a URL, reading at most `limit` bytes; FetchError on network trouble or 5xx/429."""
        try:
            async with session.get(url, headers=headers, allow_redirects=True) as resp:
                if resp.status == 304:
                    return 304, b"", resp.headers.copy()
                if resp.status >= 500 or resp.status == 429:
                    raise FetchError(f"{url}: HTTP {resp.status}")
                if resp.status != 200:
                    raise CapError(f"{url}: HTTP {resp.status}", "/", 400)
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > limit:
                        raise CapError(f"{url}: answer larger than {limit} bytes", "/", 413)
                return 200, bytes(body), resp.headers.copy()
        except aiohttp.ClientError as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
        except TimeoutError:
            raise FetchError(f"{url}: timed out") from None

    async def poll_once(self) -> PollReport:
        """One conditional GET of the feed URL and, for an index, of each new entry."""
        report = PollReport()
        now = self.feeds.clock.now
        url = self.settings.url or ""
        try:
            report = await self._poll(url)
        except (FetchError, CapError) as exc:
            self.failures += 1
            self.next_delay_s = poll_delay_s(
                self.failures, self.settings.interval_s, self.settings.max_backoff_s
            )
            await self.feeds.records.failed(self.name, now(), str(exc), outcome=None)
            log.warning(
                "feed.poll_failed",
                feed=self.name,
                reason=str(exc),
                failures=self.failures,
                retry_in_s=round(self.next_delay_s, 1),
            )
            return report
        self.failures = 0
        self.next_delay_s = self.settings.interval_s
        await self.feeds.records.succeeded(self.name, now(), outcome=None)
        return report

    async def _poll(self, url: str) -> PollReport:
        """The poll itself; raises FetchError / CapError for a failure of the whole poll."""
        records = self.feeds.records
        now = self.feeds.clock.now
        report = PollReport()
        cursor = await records.cursor(self.name, url)
        headers = {"Accept": "application/cap+xml, application/atom+xml, application/xml;q=0.9"}
        if cursor and cursor["etag"]:
            headers["If-None-Match"] = cursor["etag"]
        if cursor and cursor["last_modified"]:
            headers["If-Modified-Since"] = cursor["last_modified"]
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            status, body, resp_headers = await self._get(session, url, headers, MAX_INDEX_BYTES)
            if status == 304:
                report.not_modified = True
                log.debug("feed.not_modified", feed=self.name)
                return report
            if is_cap(body):
                report.fetched.append(url)
                await self._take(body, report)
            else:
                links = index_links(body, url)
                if links is None:
                    raise CapError("neither a CAP document nor an Atom/RSS index", "/", 422)
                known = await records.known_entries(self.name, links)
                for link in (lnk for lnk in dict.fromkeys(links) if lnk not in known):
                    try:
                        _, doc, _ = await self._get(
                            session, link, {"Accept": "application/cap+xml"}, self.settings.max_bytes
                        )
                    except FetchError as exc:
                        # Left unremembered: fetched again on the next poll.
                        log.warning("feed.entry_failed", feed=self.name, entry=link, reason=str(exc))
                        await records.failed(self.name, now(), str(exc), outcome=None)
                        continue
                    except CapError as exc:
                        report.refused += 1
                        await records.failed(self.name, now(), str(exc))
                        await records.add_entry(self.name, link, "refused", now())
                        continue
                    report.fetched.append(link)
                    outcome = await self._take(doc, report)
                    await records.add_entry(self.name, link, outcome, now())
        # Validators are remembered only once everything they cover was taken.
        await records.set_cursor(
            self.name, url, resp_headers.get("ETag"), resp_headers.get("Last-Modified"), now()
        )
        return report

    async def _take(self, body: bytes, report: PollReport) -> str:
        """Ingest one fetched CAP document; a refused one is counted, not retried."""
        try:
            results = await self.feeds.ingest.ingest_bytes(
                body, feed=self.name, source="poll", actor=self.actor, settings=self.settings
            )
        except (CapError, InputError) as exc:
            report.refused += 1
            message = str(exc) if isinstance(exc, CapError) else f"{exc.field}: {exc.message}"
            await self.feeds.records.failed(self.name, self.feeds.clock.now(), message)
            log.warning("feed.document_refused", feed=self.name, reason=message)
            return "refused"
        for r in results:
            await self.feeds.records.succeeded(self.name, self.feeds.clock.now(), r.outcome)
        report.results += len(results)
        return ",".join(sorted({r.outcome for r in results}))

    async def loop(self) -> None:
        """Poll, wait (the interval, or the backoff while failing), poll again."""
        while True:
            try:
                await self.poll_once()
            except Exception:
                # A bug must not stop the feed for good; it is logged and the poll retried.
                log.exception("feed.poll_crashed", feed=self.name)
                self.failures += 1
                self.next_delay_s = poll_delay_s(
                    self.failures, self.settings.interval_s, self.settings.max_backoff_s
                )
            await self.feeds.clock.sleep(self.next_delay_s)
