"""The one table `make bench` prints: each line warnd's figure, its reference's, their ratio, a target.

Every line is measured ≥ 3 times in one invocation, warnd and its reference alternating (the
reference first on even repetitions, warnd first on odd ones), so a machine that is busier early
or late in the run cannot favour one side; each cell shows min / median / max, and a target is
judged on the median (one run disturbed by a neighbour on a shared machine does not decide it).

A benchmark module builds `Line`s; run standalone it prints its own lines, under `make bench`
it writes them as JSON (`--json PATH`) and `bench/run_all.py` prints all of them in one table.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Line:
    """One line of the table.

    Args:
        what: what was measured.
        unit: the unit of `warnd` and `reference` (s, ms, /s, MB).
        warnd: warnd's figure, one per repetition.
        reference: the reference's figure, one per repetition of the same run (empty: none).
        ratios: the line's ratio, one per repetition (which way round is said in `ratio_is`).
        ratio_is: how the ratio is formed, e.g. "rate warnd / bare".
        target: the target in words.
        ok: whether every repetition met the target (None: reported, no target).
        note: anything the reader needs to read the line (what the reference is).
    """

    what: str
    unit: str
    warnd: list[float]
    reference: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    ratio_is: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """`min / median / max` of the repetitions (one value alone is shown as it is)."""
    if not values:
        return "—"
    if len(values) == 1:
        return fmt(values[0])
    return " / ".join(fmt(v) for v in (min(values), statistics.median(values), max(values)))


def number(value: float) -> str:
    """A figure with as many digits as it needs."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(lines: Sequence[Line]) -> str:
    """The table as Markdown, a caption of reps above it and each line's note below it."""
    out = [
        "| what | warnd (min / median / max) | reference, same run | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for x in lines:
        unit = f" {x.unit}" if x.unit else ""
        ref = spread(x.reference, number) + unit if x.reference else "—"
        ratio = f"{spread(x.ratios, number)} ({x.ratio_is})" if x.ratios else "—"
        met = "—" if x.ok is None else "OK" if x.ok else "MISSED"
        out.append(
            f"| {x.what} | {spread(x.warnd, number)}{unit} | {ref} | {ratio} | {x.target or '—'} | {met} |"
        )
    notes = [f"- {x.what}: {x.note}" for x in lines if x.note]
    return "\n".join(out + (["", *notes] if notes else []))


def emit(lines: Sequence[Line], json_path: str | None) -> int:
    """Print the lines (or write them for run_all); 1 if any target was missed, else 0."""
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(x) for x in lines], ensure_ascii=False))
    else:
        print(render(lines), flush=True)
    return 1 if any(x.ok is False for x in lines) else 0


def load(json_path: Path) -> list[Line]:
    """Lines a benchmark wrote with `emit`."""
    return [Line(**d) for d in json.loads(json_path.read_text())]


def order(rep: int) -> tuple[str, str]:
    """Which side runs first in repetition `rep`: the reference on even ones, warnd on odd ones."""
    return ("reference", "warnd") if rep % 2 == 0 else ("warnd", "reference")
