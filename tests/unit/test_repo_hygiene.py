"""Repository hygiene that a merge can break silently: conflict markers and oversized modules."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEXT_DIRS = ("src", "tests", "docs", "benchmarks", "examples")
MARKER = re.compile(r"^\s*(<{7}|>{7})( |$)|^\s*={7}$", re.M)


def _text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for d in TEXT_DIRS:
        if (ROOT / d).is_dir():
            files += [p for p in (ROOT / d).rglob("*") if p.suffix in {".py", ".md", ".txt", ".toml", ".cfg"}]
    return files


def test_no_merge_conflict_markers():
    found = [
        f"{p.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
        for p in _text_files()
        if (text := p.read_text(errors="replace"))
        for m in MARKER.finditer(text)
    ]
    assert not found, f"merge conflict markers left in: {found}"


@pytest.mark.parametrize("limit", [600])
def test_source_modules_stay_under_the_size_limit(limit):
    """STYLE.md: one concept per file, never over 600 lines."""
    too_big = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "src").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > limit
    }
    assert not too_big, f"modules over {limit} lines (split them by concept): {too_big}"


def test_the_marker_pattern_finds_a_marker():
    # the hygiene check must be able to fail
    sample = "a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> main\n"
    assert len(MARKER.findall(sample)) == 3
