"""Every MUR_* environment variable the code reads is documented in the
README's table (name, who reads it, default, meaning)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where variables are read or set: the server, its tests and benchmarks, the
# clients, the scripts and the Makefile. The native engine's C++ is left out:
# its MUR_* names are include guards and macros, not environment variables.
SOURCES = [
    "ts-server/src",
    "ts-server/test",
    "ts-server/bench",
    "ts-client/src",
    "ts-client/test",
    "ts-client/examples",
    "python-runner",
    "scripts",
    "Makefile",
]
SUFFIXES = {".ts", ".py", ".sh", ".js", ""}
NAME = re.compile(r"\bMUR_[A-Z0-9_]*[A-Z0-9]\b")
SKIP_DIRS = {"node_modules", "__pycache__", "_proto", "generated", "dist", "build"}


def _files():
    for entry in SOURCES:
        path = ROOT / entry
        if path.is_file():
            yield path
            continue
        for f in path.rglob("*"):
            if f.is_file() and f.suffix in SUFFIXES and not SKIP_DIRS.intersection(f.relative_to(ROOT).parts):
                yield f


def used_variables():
    found = {}
    for f in _files():
        for name in NAME.findall(f.read_text(errors="replace")):
            found.setdefault(name, f.relative_to(ROOT))
    return found


def documented_variables():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `MUR_")]
    documented = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), f"README row needs name, read by, default, meaning: {row}"
        for name in re.findall(r"`(MUR_[A-Z0-9_]+)`", cells[0]):
            documented[name] = cells
    return documented


def test_the_scan_finds_variables():
    # Guards the scan itself: the log level is read by the server for sure.
    assert "MUR_LOG" in used_variables()


def test_every_variable_is_documented():
    documented = documented_variables()
    missing = {name: str(where) for name, where in used_variables().items() if name not in documented}
    assert not missing, f"MUR_* variables used but not in README.md's table: {missing}"


def test_no_documented_variable_is_stale():
    used = used_variables()
    stale = sorted(set(documented_variables()) - set(used))
    assert not stale, f"README.md documents variables nothing reads: {stale}"
