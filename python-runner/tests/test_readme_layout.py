"""The README's layout section is true to the tree (as test_env_vars.py keeps its table of
variables true to the code).

The layout is a code block of lines ``PATH  description``; a description may go on over
indented lines. PATH is a directory (``docs/``), a file, or a glob (``ts-server/src/rules/*.ts``).
Two checks:

* Every path it names exists: each PATH, and each file or directory named in a description
  (a word ending in a known suffix such as ``engine.ts`` or ``kernels.cc``, or in ``/``, such
  as ``reference/``), relative to its line's directory or to the repository; a glob must
  match something.
* Every module of the tree is named, at the granularity of one line per directory: a source
  file under SOURCE_ROOTS is covered by a PATH that is that file or a glob matching it, or by
  the line of its nearest listed directory, whose description must name it (``native.ts``),
  a glob matching it (``optimizers/*-inl.h``) or a subdirectory holding it (``experiments/``).
  A module is a file, except that a C++ header goes with the ``.cc`` of the same name (naming
  ``pool.cc`` covers ``pool.h``). Not modules: tests (``*.test.ts``, ``test_*.py``,
  ``conftest.py``), package entry points that only re-export (``index.ts``, ``__init__.py``)
  and generated code (``generated/``, ``_proto/``).
"""

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The trees whose every module the layout names; tests and harnesses (ts-server/test,
# python-runner/tests) are listed by directory only.
SOURCE_ROOTS = [
    "proto",
    "docs",
    "scripts",
    "ts-server/src",
    "ts-server/native/src",
    "ts-server/bench",
    "ts-client/src",
    "ts-client/examples",
    "python-runner/mur",
    "python-runner/lab/mur_lab",
    "python-runner/scripts",
]
SUFFIXES = {".ts", ".cc", ".h", ".py", ".sh", ".md", ".proto", ".json"}
SKIP_DIRS = {"node_modules", "__pycache__", "_proto", "generated", "dist", "build"}
NOT_MODULES = ("*.test.ts", "test_*.py", "conftest.py", "index.ts", "__init__.py")
WORD = re.compile(r"[\w.*-]+(?:/[\w.*-]+)*/?")


def layout():
    """[(path, description)] of the README's layout block, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    entries = []
    for line in block.splitlines()[1:]:  # the fence's own line first
        if not line.strip():
            continue
        if line[0].isspace():
            assert entries, f"README layout: a continuation line before any path: {line!r}"
            path, text = entries[-1]
            entries[-1] = (path, f"{text} {line.strip()}")
        else:
            path, _, text = line.partition("  ")
            entries.append((path.strip(), text.strip()))
    return entries


def named(text):
    """The file and directory names a description mentions."""
    return [w for w in WORD.findall(text) if w.endswith("/") or Path(w.rstrip("/")).suffix in SUFFIXES]


def exists(pattern, base=ROOT):
    if pattern.endswith("/"):
        return (base / pattern).is_dir()
    if any(c in pattern for c in "*?["):
        return any(base.glob(pattern))
    return (base / pattern).exists()


def modules():
    for top in SOURCE_ROOTS:
        for f in sorted((ROOT / top).rglob("*")):
            rel = f.relative_to(ROOT)
            if not f.is_file() or f.suffix not in SUFFIXES or SKIP_DIRS.intersection(rel.parts):
                continue
            if any(fnmatch.fnmatch(f.name, p) for p in NOT_MODULES):
                continue
            yield rel.as_posix()


def _names_it(word, rel):
    if word.endswith("/"):
        return rel.startswith(word)
    return fnmatch.fnmatch(rel, word)


def covered(module, entries):
    """None when the layout names the module, else why not."""
    alike = [module]
    if module.endswith(".h"):  # a header goes with the .cc of the same name
        alike.append(module[: -len(".h")] + ".cc")
    best = None
    for path, text in entries:
        if not path.endswith("/"):
            if any(fnmatch.fnmatch(m, path) for m in alike):
                return None
        elif module.startswith(path) and (best is None or len(path) > len(best[0])):
            best = (path, text)
    if best is None:
        return "no layout line for its directory"
    path, text = best
    rels = [m[len(path) :] for m in alike]
    if any(_names_it(w, r) for w in named(text) for r in rels):
        return None
    return f"not named on the line of {path}"


def test_the_layout_is_read():
    # Guards the parser: the contract's line and the native engine's are there.
    paths = dict(layout())
    assert "proto/mur/v1/optimizer.proto" in paths
    assert "kernels.cc" in named(paths["ts-server/native/src/"])


def test_the_scan_finds_modules():
    found = set(modules())
    assert "ts-server/src/registry.ts" in found and "python-runner/mur/server.py" in found
    assert not any(m.endswith((".test.ts", "__init__.py")) or "/_proto/" in m for m in found)


def test_every_listed_path_exists():
    missing = []
    for path, text in layout():
        if not exists(path):
            missing.append(path)
            continue
        base = ROOT / path if path.endswith("/") else (ROOT / path).parent
        missing += [f"{path}: {w}" for w in named(text) if not exists(w, base) and not exists(w)]
    assert not missing, f"README.md's layout names paths that do not exist: {missing}"


def test_every_module_is_in_the_layout():
    entries = layout()
    missing = {}
    for m in modules():
        why = covered(m, entries)
        if why:
            missing[m] = why
    assert not missing, f"modules missing from README.md's layout: {missing}"
