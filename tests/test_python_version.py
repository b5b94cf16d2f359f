"""Issue 12: the Python that pyproject.toml declares can import every module featcache ships."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Standard-library modules newer than Python 3.10, with the version that added them.
NEWER_STDLIB = {"tomllib": (3, 11)}


def _declared_minimum() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert spec.startswith(">="), spec
    major, minor = spec[2:].strip().split(".")[:2]
    return int(major), int(minor)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_requires_python_covers_every_stdlib_module_the_package_imports():
    shipped = [ROOT / "cli.py", *sorted((ROOT / "featcache").rglob("*.py")), *sorted((ROOT / "classifiers").rglob("*.py"))]
    minimum = _declared_minimum()
    too_new = {f"{p.relative_to(ROOT)} imports {name} (Python {'.'.join(map(str, NEWER_STDLIB[name]))}+)"
               for p in shipped for name in _imports(p) if name in NEWER_STDLIB and NEWER_STDLIB[name] > minimum}
    assert not too_new, f"requires-python allows {minimum[0]}.{minimum[1]}, but: {sorted(too_new)}"
