"""Helpers for feed tests: a harness with feeds configured, real CAP documents, villages inside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import shapely

from tests.support.harness import Harness
from warnd.cap import parse_cap_many
from warnd.tokenhash import hash_token

PUSH_TOKEN = "push-feed-token"


def feed(name: str, kind: str, **extra: Any) -> dict[str, Any]:
    """A [[feed]] entry; push feeds get PUSH_TOKEN."""
    entry: dict[str, Any] = {"name": name, "kind": kind, **extra}
    if kind == "push" and "token_hash" not in entry:
        entry["token_hash"] = hash_token(PUSH_TOKEN)
    return entry


def inside_points(data: bytes) -> list[tuple[float, float]]:
    """One (lat, lon) inside each polygon and at the centre of each circle of a document's areas."""
    points = []
    for alert in parse_cap_many(data):
        for info in alert.infos:
            for area in info.areas:
                for ring in area.polygons:
                    p = shapely.Polygon([(pt.lon, pt.lat) for pt in ring]).buffer(0).representative_point()
                    points.append((p.y, p.x))
                for c in area.circles:
                    points.append((c.lat, c.lon))
    return points


def villages_toml(points: dict[str, tuple[float, float]]) -> str:
    """[[village]] entries at the given points, by 12-digit code."""
    return "".join(
        f'\n[[village]]\ncode = "{code}"\nname = "点{code[-3:]}"\nlat = {lat!r}\nlon = {lon!r}\n'
        f'speakers = ["spk-{code}"]\n'
        for code, (lat, lon) in points.items()
    )


async def feed_harness(
    tmp_path: Path, feeds: list[dict[str, Any]], extra_villages: str = "", **kw: Any
) -> Harness:
    """A started harness with these feeds and extra villages."""
    settings = {"feed": feeds, **kw.pop("settings", {})}
    return await Harness(tmp_path, directory={"extra": extra_villages}, settings=settings, **kw).start()


def push_headers(token: str = PUSH_TOKEN, content_type: str = "application/cap+xml") -> dict[str, str]:
    """Headers of a push request."""
    return {"Authorization": f"Bearer {token}", "Content-Type": content_type}
