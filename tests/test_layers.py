"""The project's floors, read from the source: imports run one way, and predict paths never reach training."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Floor of each package: a module may import its own floor and those below, never one above.
#: engine (the trainer, reports, run folders, typed settings) sits below data (collections, splits, and the
#: config helpers that read them); the two branches share a floor and never read each other.
FLOORS = {"engine": 0, "data": 1, "covers": 2, "audio": 2, "fusion": 3, "acquire": 4, "scoring": 4, "genrefusion": 5}
#: The floor of the branches.
BRANCHES = 2
#: Training code: what a predict path must not import, directly or through other modules.
TRAINING = {"engine.trainer", "engine.run", "covers.train", "covers.reproduce", "audio.train", "fusion.run",
            "fusion.protocol"}
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


def layer_violations(module: str, path: Path) -> list[str]:
    """What ``module`` (its source at ``path``) imports against the floors: from a higher floor, or from the
    other branch."""
    package = module.split(".")[0]
    found = []
    for imported in sorted(_project_imports(path)):
        other = imported.split(".")[0]
        if FLOORS[other] > FLOORS[package]:
            found.append(f"{module} imports {imported} from a higher floor")
        elif FLOORS[package] == FLOORS[other] == BRANCHES and other != package:
            found.append(f"branch {module} reads the other branch's internals ({imported})")
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_up_a_floor_or_across_branches(module):
    assert layer_violations(module, MODULES[module]) == []


def test_an_import_that_runs_up_is_caught(tmp_path):
    """A deliberate one: engine reading data (the floor above it), at the top and inside a function."""
    source = tmp_path / "leaning.py"
    source.write_text("from engine.io import write_json\nfrom data.items import LoadResult\n\n\n"
                      "def f():\n    import data.splits\n")
    assert layer_violations("engine.leaning", source) == [
        "engine.leaning imports data.items from a higher floor",
        "engine.leaning imports data.splits from a higher floor"]
    assert layer_violations("data.leaning", source) == []  # data may read engine
    source.write_text("from audio.io import load_audio\n")
    assert layer_violations("covers.leaning", source) == [
        "branch covers.leaning reads the other branch's internals (audio.io)"]


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
