"""The package layering the structure rests on: dscnn stands below searchspace, pruning and studies,
and nothing imports another package's private module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dscnn", "searchspace", "pruning", "studies")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_dscnn_never_imports_the_packages_above_it() -> None:
    offenders = [f"{p.relative_to(ROOT)}: {name}" for p in (ROOT / "dscnn").rglob("*.py") for name in _imports(p)
                 if name.split(".")[0] in ("searchspace", "pruning", "studies", "search")]
    assert not offenders, offenders


def test_no_private_module_is_imported_from_another_package() -> None:
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] in PACKAGES and parts[0] != package and any(
                    p.startswith("_") and not p.startswith("__") for p in parts[1:]
                ):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders
