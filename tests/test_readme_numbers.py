"""The README's speed figures are the benchmark result files' (rendered, never retyped)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _renderer():
    spec = importlib.util.spec_from_file_location("readme_numbers", ROOT / "benchmarks" / "readme_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_speed_figures_are_rendered_from_the_result_files():
    renderer = _renderer()
    block = renderer.render()
    assert block in (ROOT / "README.md").read_text(), "run .venv/bin/python benchmarks/readme_numbers.py"
    assert "tracks/s" in block and "× naive" in block and "images/s" in block


def test_rendering_follows_the_result_files(tmp_path, monkeypatch):
    """A changed figure in a result file changes the block (the README test can fail)."""
    import json
    import shutil

    renderer = _renderer()
    results = tmp_path / "results"
    shutil.copytree(renderer.RESULTS, results)
    features = json.loads((results / "feature_speed.json").read_text())
    features["seconds_per_clip"]["torch_cpu_1_core"] = 12.3456
    (results / "feature_speed.json").write_text(json.dumps(features))
    monkeypatch.setattr(renderer, "RESULTS", results)
    assert "| torch cpu 1 core | 12.3456 |" in renderer.render()


def test_a_copied_tree_records_the_commit_its_sender_names(tmp_path, monkeypatch):
    """Benchmarks run on a lent machine get a copy of the tree (no .git, or a stale one): their result files
    name the commit given in $GENREFUSION_COMMIT; without it, git's answer, or None outside git."""
    import shutil

    import engine.run

    copy = tmp_path / "run.py"  # tmp_path is outside any git checkout
    shutil.copy(engine.run.__file__, copy)
    spec = importlib.util.spec_from_file_location("run_copy", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv(module.COMMIT_ENV_VAR, raising=False)
    assert module._git_commit() is None
    monkeypatch.setenv(module.COMMIT_ENV_VAR, "abc1234")
    assert module._git_commit() == "abc1234"
    assert engine.run._git_commit() == "abc1234"  # a checkout's own (possibly stale) .git does not override it
    monkeypatch.delenv(module.COMMIT_ENV_VAR)
    assert engine.run._git_commit() not in (None, "abc1234")
