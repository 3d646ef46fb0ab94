"""The house rules of the code's layout (docs/design.md, "Layers"), checked on the source.

- ``pipeline/`` uses ``transforms/``, never the reverse;
- inside ``transforms/``, a package imports only the packages of its own layer or
  below it, in the order written down in docs/design.md;
- no module in ``pipeline/`` or ``transforms/`` is over 450 lines, and no two share a
  name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# docs/design.md, "Layers": each top-level name of transforms/ and its layer.
LAYERS = {
    "errors": 1,
    "dead_letters": 1,
    "metrics": 1,
    "progress": 1,
    "files": 1,
    "beam_internals": 1,
    "report": 1,
    "config": 2,
    "events": 3,
    "segments": 4,
    "snapshots": 5,
    "columnar": 6,
    # Beside the chain: may use layer 1 only, and nothing may use it but pipeline/.
    "kinesis": 1.5,
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _project_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import of ``pipeline`` or ``transforms``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in ("pipeline", "transforms")]
    return found


def _part(dotted: str) -> str | None:
    """The top-level name inside transforms/ of a dotted import (None: the package)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def test_transforms_never_import_pipeline():
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _modules("transforms")
        for line, name in _project_imports(path)
        if name.split(".")[0] == "pipeline"
    ]
    assert not wrong, wrong


def test_every_part_of_transforms_has_a_layer():
    parts = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / "transforms").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert parts, "no part of transforms/ found"
    assert parts == set(LAYERS), "update docs/design.md and LAYERS together"


def test_transforms_import_in_one_direction():
    wrong = []
    checked = 0
    for path in _modules("transforms"):
        relative = path.relative_to(ROOT / "transforms")
        own = relative.parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for line, name in _project_imports(path):
            other = _part(name)
            if other is None or other == own or other not in LAYERS:
                continue
            checked += 1
            if own == "kinesis":
                allowed = LAYERS[other] == 1
            elif other == "kinesis":
                allowed = False
            else:
                allowed = LAYERS[other] <= LAYERS[own]
            if not allowed:
                wrong.append(f"transforms/{relative}:{line}: {own} imports {name}")
    assert checked > 50, "the check found almost no imports: is the parser broken?"
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ["pipeline", "transforms"])
def test_modules_are_small(package):
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in _modules(package)
    }
    assert sizes
    assert {path: n for path, n in sizes.items() if n > 450} == {}


def test_no_two_modules_share_a_name():
    by_name: dict[str, list[str]] = {}
    for package in ("pipeline", "transforms"):
        for path in _modules(package):
            if path.stem not in ("__init__", "__main__"):
                by_name.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    assert len(by_name) > 40
    assert {name: paths for name, paths in by_name.items() if len(paths) > 1} == {}
