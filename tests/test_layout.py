"""The package boundaries of DESIGN: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The house, bottom to top: each package may import those below it, never one above it.
# teacher_labeling and finetune share a floor: neither imports the other.
FLOORS = [{"toolkit"}, {"teacher_labeling", "finetune"}, {"croptune"}]
PACKAGES = set().union(*FLOORS)


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a module imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    """Every .py file of a package."""
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        # teachers know nothing of students
        ("teacher_labeling", {"finetune"}),
        # students know nothing of teachers: shared protocols live in toolkit core
        ("finetune", {"teacher_labeling"}),
    ],
)
def test_package_never_imports_the_other(package, forbidden):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
        for path in modules(package)
        if imported_packages(path) & forbidden
    }
    assert offenders == {}


def _above(package: str) -> set[str]:
    floor = next(n for n, names in enumerate(FLOORS) if package in names)
    return set().union(*FLOORS[floor + 1 :])


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_points_up(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & _above(package))
        for path in modules(package)
        if imported_packages(path) & _above(package)
    }
    assert offenders == {}


def test_every_package_is_on_a_floor():
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert on_disk == PACKAGES


def test_the_checker_sees_nested_imports(tmp_path):
    # an import inside a function still counts (croptune imports heavy things lazily)
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from finetune.train import train\n    import teacher_labeling\n"
    )
    assert imported_packages(module) == {"finetune", "teacher_labeling"}
