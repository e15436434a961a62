"""The project's floors, read from the source: imports run one way, and predict paths never reach training."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Floor of each package: a module may import its own floor and those below, never one above.
FLOORS = {"engine": 0, "data": 0, "covers": 1, "audio": 1, "fusion": 2, "acquire": 3, "scoring": 3}
#: Training code: what a predict path must not import, directly or through other modules.
TRAINING = {"engine.trainer", "engine.run", "covers.train", "covers.reproduce", "audio.train", "fusion.run"}
#: The predict paths (and everything built only on them).
PREDICT = ["covers.predict", "audio.predict", "fusion.heads", "covers.evaluate", "scoring.tracks",
           "scoring.audio_files", "acquire.verify"]


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _project_imports(path: Path) -> set[str]:
    """Project modules ``path`` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in FLOORS and _source(name) is not None}
    return found


def _source(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


MODULES = {_module_name(p): p for package in FLOORS for p in sorted((ROOT / package).glob("*.py"))}


def test_every_package_has_a_floor():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages <= set(FLOORS), sorted(packages - set(FLOORS))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_up_a_floor_or_across_branches(module):
    package = module.split(".")[0]
    for imported in _project_imports(MODULES[module]):
        other = imported.split(".")[0]
        assert FLOORS[other] <= FLOORS[package], f"{module} imports {imported} from a higher floor"
        if FLOORS[package] == 1 and FLOORS[other] == 1:
            assert other == package, f"branch {module} reads the other branch's internals ({imported})"


@pytest.mark.parametrize("module", PREDICT)
def test_predict_paths_never_import_training_code(module):
    seen, stack = set(), [module]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        assert current not in TRAINING, f"{module} reaches training code through {current}"
        source = _source(current)
        if source is not None and source.name != "__init__.py":
            stack += _project_imports(source)
