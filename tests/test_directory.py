"""Directory lookups: an area's administrative codes reach the villages under them."""

from __future__ import annotations

from pathlib import Path

from tests.support.county import directory_toml, village_code
from warnd.directory import Directory
from warnd.model import Area


def test_codes_reach_a_village_its_township_or_its_county(tmp_path: Path) -> None:
    """12 digits name one village, 9 its township, 6 its county; other codes reach nothing."""
    extra = '[[village]]\ncode = "330503100201"\nname = "邻县村"\nlat = 30.2\nlon = 120.2\n'
    path = tmp_path / "directory.toml"
    path.write_text(directory_toml(villages=3, extra=extra), encoding="utf-8")
    d = Directory.load(path)
    township = [village_code(i) for i in range(3)] + ["330502101299"]
    assert d.by_prefix(village_code(1)) == [village_code(1)]
    assert d.by_prefix("330502101") == sorted(township)
    assert d.by_prefix("330502") == sorted(township)
    assert d.by_prefix("330503") == ["330503100201"]
    assert d.by_prefix("330504") == [] and d.by_prefix("330502101998") == []
    assert d.by_prefix("3305") == []  # not an administrative code
    area = Area(codes=[village_code(0), "330503"])
    assert d.match(area) == [village_code(0), "330503100201"]
