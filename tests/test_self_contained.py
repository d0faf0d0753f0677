"""The repository stands alone: no tracked file points outside it, every doc link lands, test data is intact.

A plain `git clone` with nothing beside it must build, test and explain itself: test documents live
in tests/data/ (tests/support/data.py), the architecture in docs/.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from tests.support.data import DATA

ROOT = Path(__file__).resolve().parents[1]
THIS = PurePosixPath("tests") / Path(__file__).name

# Files that lived beside the repository while it was built and are not part of it: a reference to
# one of them is a dead end for anyone with only the clone.
OUTSIDE = ("../shared", "shared/testdata", "/work/shared", "DESIGN.md", "DOMAIN.md", "STYLE.md")

# [text](target) and ![alt](target), with an optional "title"; and reference definitions `[x]: target`.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto: …


def tracked_files() -> list[PurePosixPath]:
    """The files git tracks in this checkout, as repository-relative paths."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    return [PurePosixPath(name) for name in out.split("\0") if name]


def outside_references(text: str) -> list[str]:
    """The names of outside files a text mentions."""
    return [name for name in OUTSIDE if name in text]


def link_targets(markdown: str) -> list[str]:
    """Relative link targets of a markdown text (code blocks and code spans are not links)."""
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    return [t for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def broken_links(doc: PurePosixPath, markdown: str, tracked: set[PurePosixPath]) -> list[str]:
    """Relative links of a markdown file that name no tracked file or directory of the repository."""
    dirs = {parent for path in tracked for parent in path.parents}
    broken = []
    for target in link_targets(markdown):
        path = target.split("#", 1)[0].split("?", 1)[0]
        parts: list[str] = []
        for part in (*doc.parent.parts, *PurePosixPath(path).parts):
            if part == "..":
                if not parts:  # above the repository's root
                    parts = ["..", "outside"]
                    break
                parts.pop()
            elif part != ".":
                parts.append(part)
        resolved = PurePosixPath(*parts) if parts else PurePosixPath(".")
        if resolved not in tracked and resolved not in dirs:
            broken.append(target)
    return broken


def test_no_tracked_file_refers_outside_the_repository() -> None:
    offenders = []
    for name in tracked_files():
        if name == THIS:
            continue
        text = (ROOT / name).read_bytes().decode("utf-8", errors="replace")
        offenders += [f"{name}: {ref}" for ref in outside_references(text)]
    assert offenders == []


def test_relative_links_in_readme_and_docs_land() -> None:
    tracked = set(tracked_files())
    docs = [p for p in tracked if str(p) == "README.md" or (str(p.parent) == "docs" and p.suffix == ".md")]
    assert PurePosixPath("docs/architecture.md") in docs
    broken = {str(doc): broken_links(doc, (ROOT / doc).read_text(encoding="utf-8"), tracked) for doc in docs}
    assert {doc: links for doc, links in broken.items() if links} == {}


def test_the_checks_catch_what_they_are_for() -> None:
    tracked = {PurePosixPath("README.md"), PurePosixPath("docs/deploy.md"), PurePosixPath("bench/README.md")}
    doc = PurePosixPath("docs/guide.md")
    markdown = (
        "[ok](deploy.md) [ok too](../bench/README.md#numbers) [dir](../bench/) [web](https://example.org/x.md)\n"
        "[gone](missing.md) ![img](../img/none.png) [up](../../elsewhere.md) [anchor](#top)\n"
        "`[code](not-a-link.md)`\n```\n[fenced](not-a-link-either.md)\n```\n[ref]: ./gone-too.md\n"
    )
    assert broken_links(doc, markdown, tracked) == [
        "missing.md",
        "../img/none.png",
        "../../elsewhere.md",
        "./gone-too.md",
    ]
    found = outside_references("see ../shared/testdata and DESIGN.md")
    assert found == ["../shared", "shared/testdata", "DESIGN.md"]
    assert outside_references("see docs/architecture.md") == []


def test_test_data_matches_its_checksums_and_is_described() -> None:
    listed = {}
    for line in (DATA / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    data = PurePosixPath("tests/data")
    on_disk = {
        str(p.relative_to(data))
        for p in tracked_files()
        if data in p.parents and p.name not in ("SHA256SUMS", "SOURCES.md")
    }
    # Every document has a checksum and the checksums name only documents the repository holds.
    assert set(listed) == on_disk
    # Byte for byte as published: a checkout that rewrote line endings or encodings fails here.
    actual = {name: hashlib.sha256((DATA / name).read_bytes()).hexdigest() for name in listed}
    assert [name for name, digest in listed.items() if actual[name] != digest] == []
    # Every document has its origin and licence in SOURCES.md.
    sources = (DATA / "SOURCES.md").read_text(encoding="utf-8")
    assert [name for name in sorted(on_disk) if f"| `{name}` |" not in sources] == []
