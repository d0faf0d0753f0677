"""Directory lookups: an area's administrative codes reach the villages under them."""

from __future__ import annotations

from pathlib import Path

from tests.support.county import county_toml, county_village_code, directory_toml, village_code
from warnd.config import ConfigError
from warnd.directory import CHUNK, Directory
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


def _problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    """The problems Directory.load names for a directory file."""
    path = tmp_path / "directory.toml"
    path.write_text(text, encoding="utf-8")
    try:
        Directory.load(path)
    except ConfigError as exc:
        return exc.problems
    raise AssertionError("the directory was accepted")


def test_a_county_directory_loads_and_every_reference_resolves(tmp_path: Path) -> None:
    """200 villages and 10,010 people, each but the first official with a superior: all found."""
    path = tmp_path / "directory.toml"
    path.write_text(county_toml(villages=200), encoding="utf-8")
    d = Directory.load(path)
    assert len(d.villages) == 200 and len(d.people) == 10_010
    assert all(p.superior is None or p.superior in d.people for p in d.people.values())
    assert d.people["v199-49"].superior == "v199-5" and d.people["v199-0"].superior == "off-0"
    assert len(d.people_in([county_village_code(199)], roles=["grid_worker"])) == 9
    # Compact records: no per-instance __dict__ (a county holds 50,000 of them).
    assert not hasattr(d.people["v0-1"], "__dict__") and not hasattr(
        d.villages[county_village_code(0)], "__dict__"
    )


def test_bad_references_at_county_scale_are_named(tmp_path: Path) -> None:
    """A 10,011th person with a missing superior, a taken id, an unknown village or key: each named."""
    base = county_toml(villages=200)
    last = (
        '\n[[person]]\nid = "late"\nname = "某"\nrole = "resident"\n'
        'superior = "{sup}"\nvillages = ["{code}"]\n'
    )
    ok_code = county_village_code(0)
    [(key, message)] = _problems(tmp_path, base + last.format(sup="nobody", code=ok_code))
    assert message == "Value error, person late: superior 'nobody' is not in the directory"
    [(key, message)] = _problems(
        tmp_path, base + last.format(sup="v0-0", code=ok_code).replace("late", "v3-3")
    )
    assert message == "Value error, person id 'v3-3' appears twice"
    [(key, message)] = _problems(tmp_path, base + last.format(sup="v0-0", code="330502101999"))
    assert message == "Value error, person late: village 330502101999 is not in the directory"
    [(key, message)] = _problems(tmp_path, base + last.format(sup="v0-0", code=ok_code) + "mobile = 1\n")
    assert key == "person[10010].mobile" and message == "Extra inputs are not permitted"


def test_a_reload_beside_the_loop_loads_and_reports_as_start_up_does(tmp_path: Path) -> None:
    """Loaded beside the loop (pure-Python parse, records a chunk at a time): the same directory,
    and the same problems named at the same places, for a bad record deep in the file."""
    path = tmp_path / "directory.toml"
    path.write_text(county_toml(villages=20), encoding="utf-8")
    at_start, beside = Directory.load(path), Directory.load(path, beside_loop=True)
    assert at_start.people == beside.people and at_start.villages == beside.villages
    bad = path.read_text(encoding="utf-8").replace('id = "v15-3"', 'id = "v15-3"\nmobile = 1', 1)
    bad = bad.replace('phone = "', 'phone = "0', 1)  # the first person's phone loses its +
    path.write_text(bad, encoding="utf-8")
    problems = []
    for beside_loop in (False, True):
        try:
            Directory.load(path, beside_loop=beside_loop)
        except ConfigError as exc:
            problems.append(exc.problems)
    assert len(problems) == 2 and problems[0] == problems[1]
    assert {key.split(".")[-1] for key, _ in problems[0]} == {"mobile", "phone"}
    assert any(key.startswith("person[") and int(key[7 : key.index("]")]) > CHUNK for key, _ in problems[0])
