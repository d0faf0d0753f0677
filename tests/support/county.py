"""Build directory.toml files of any size for tests and benchmarks: a made-up township."""

from __future__ import annotations

from pathlib import Path

TOWNSHIP = "330502101"


def village_code(i: int) -> str:
    """The 12-digit code of the i-th village of the test township (201, 202, …)."""
    return f"{TOWNSHIP}{201 + i:03d}"


def directory_toml(
    villages: int = 3,
    speakers: int = 2,
    leds: int = 1,
    *,
    officials: int = 1,
    secretaries: bool = True,
    grid_workers: bool = True,
    test_village: bool = True,
    wecom_users: bool = False,
    robots: int = 0,
    extra: str = "",
) -> str:
    """A directory: `villages` villages in a row 2 km apart, each with its devices and people.

    wecom_users: secretaries and grid workers get a WeCom user too (officials always have one).
    robots: WeCom group robots, `WARND_TEST_ROBOT_{k}`, sharing the villages out between them.
    """
    out = []
    for i in range(villages):
        code = village_code(i)
        spk = ", ".join(f'"spk-{code}-{k + 1}"' for k in range(speakers))
        led = ", ".join(f'"led-{code}-{k + 1}"' for k in range(leds))
        out.append(
            f'[[village]]\ncode = "{code}"\nname = "村{i + 1}"\nlat = {30.0 + i * 0.018:.4f}\n'
            f"lon = 120.0\nspeakers = [{spk}]\nled_boards = [{led}]\n"
        )
    if test_village:
        out.append(
            '[[village]]\ncode = "330502101299"\nname = "演练点"\nlat = 31.5\nlon = 121.5\n'
            'speakers = ["spk-test-1"]\ntest = true\n'
        )
    codes = ", ".join(f'"{village_code(i)}"' for i in range(villages))
    for k in range(officials):
        sup = f'superior = "off-{k - 1}"\n' if k else ""
        out.append(
            f'[[person]]\nid = "off-{k}"\nname = "领导{k}"\nphone = "+86138000{k:05d}"\n'
            f'role = "official"\nvillages = [{codes}]\nwecom_user = "official{k}"\n{sup}'
        )
    for i in range(villages):
        code = village_code(i)
        if secretaries:
            out.append(
                f'[[person]]\nid = "sec-{i}"\nname = "书记{i}"\nphone = "+86139{i:08d}"\n'
                f'role = "village_secretary"\nvillages = ["{code}"]\nsuperior = "off-0"\n'
                + (f'wecom_user = "sec{i}"\n' if wecom_users else "")
            )
        if grid_workers:
            out.append(
                f'[[person]]\nid = "grid-{i}"\nname = "网格员{i}"\nphone = "+86137{i:08d}"\n'
                f'role = "grid_worker"\nvillages = ["{code}"]\nsuperior = "sec-{i}"\n'
                + (f'wecom_user = "grid{i}"\n' if wecom_users else "")
            )
    for k in range(robots):
        mine = ", ".join(f'"{village_code(i)}"' for i in range(villages) if i % robots == k)
        out.append(f'[[wecom_robot]]\nkey_env = "WARND_TEST_ROBOT_{k}"\nvillages = [{mine}]\n')
    if test_village:
        out.append(
            '[[person]]\nid = "tester"\nname = "演练员"\nphone = "+8613600000000"\nrole = "official"\n'
            'villages = ["330502101299"]\ntest = true\n'
        )
    return "\n".join(out) + extra


def write_directory(path: Path, **kwargs: object) -> Path:
    """Write a generated directory.toml and return its path."""
    path.write_text(directory_toml(**kwargs), encoding="utf-8")  # type: ignore[arg-type]
    return path


def county_village_code(i: int) -> str:
    """The 12-digit code of the i-th village of a made-up county: 500 villages per township."""
    return f"330502{101 + i // 500:03d}{201 + i % 500:03d}"


def county_toml(villages: int = 1000, people_per_village: int = 50, officials: int = 10) -> str:
    """A county directory: 1,000 villages × 10 speakers and 50 people each, plus 10 officials (50,010).

    Each village has a secretary, 9 grid workers and residents, all with a phone; grid workers
    answer to their secretary, secretaries to the first official, each official to the one
    before: every person but the first has a superior the validation must find.
    """
    out = []
    for i in range(villages):
        code = county_village_code(i)
        spk = ", ".join(f'"spk-{code}-{k + 1}"' for k in range(10))
        out.append(
            f'[[village]]\ncode = "{code}"\nname = "村{i + 1}"\nlat = {30.0 + (i % 100) * 0.01:.4f}\n'
            f'lon = {120.0 + (i // 100) * 0.01:.4f}\nspeakers = [{spk}]\nled_boards = ["led-{code}-1"]\n'
        )
    codes = ", ".join(f'"{county_village_code(i)}"' for i in range(villages))
    for k in range(officials):
        sup = f'superior = "off-{k - 1}"\n' if k else ""
        out.append(
            f'[[person]]\nid = "off-{k}"\nname = "领导{k}"\nphone = "+86138000{k:05d}"\n'
            f'role = "official"\nvillages = [{codes}]\nwecom_user = "official{k}"\n{sup}'
        )
    n = 0
    for i in range(villages):
        code = county_village_code(i)
        for j in range(people_per_village):
            role, sup = (
                ("village_secretary", "off-0")
                if j == 0
                else ("grid_worker", f"v{i}-0")
                if j < 10
                else ("resident", f"v{i}-{1 + j % 9}")
            )
            out.append(
                f'[[person]]\nid = "v{i}-{j}"\nname = "村民{n}"\nphone = "+86137{n:08d}"\n'
                f'role = "{role}"\nvillages = ["{code}"]\nsuperior = "{sup}"\n'
            )
            n += 1
    return "\n".join(out)
