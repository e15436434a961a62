"""The README and docs/: measured tables rendered from their result files, a short README, no `+key=`."""
import importlib.util
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _renderer():
    spec = importlib.util.spec_from_file_location("render", ROOT / "docs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_page_agrees_with_its_result_files():
    renderer = _renderer()
    assert renderer.stale_pages() == [], "run .venv/bin/python docs/render.py"
    blocks = {page.name: renderer.BLOCK.findall(page.read_text()) for page in renderer.PAGES}
    assert blocks["README.md"] and blocks["results.md"] and blocks["speed.md"]
    speed = (ROOT / "docs" / "speed.md").read_text()
    assert "tracks/s" in speed and "× naive" in speed and "images/s" in speed


def test_a_changed_result_file_makes_its_page_stale(tmp_path, monkeypatch):
    """Each kind of block follows its files: a page can fail the test above."""
    renderer = _renderer()
    results = tmp_path / "results"
    shutil.copytree(renderer.RESULTS, results)
    features = json.loads((results / "feature_speed.json").read_text())
    features["seconds_per_clip"]["torch_cpu_1_core"] = 12.3456
    (results / "feature_speed.json").write_text(json.dumps(features))
    monkeypatch.setattr(renderer, "RESULTS", results)
    assert "| torch cpu 1 core | 12.3456 |" in renderer.render("speed")

    copy = tmp_path / "root"
    shutil.copytree(ROOT / "results" / "real-pairs-spotify-albums", copy / "main")
    metrics = json.loads((copy / "main" / "metrics_pairing-real.json").read_text())
    fused = list(metrics["rows"])[-1]
    metrics["rows"][fused]["accuracy"] = 0.5
    (copy / "main" / "metrics_pairing-real.json").write_text(json.dumps(metrics))
    monkeypatch.setattr(renderer, "ROOT", copy)
    assert "| fused (weighted, cross-fitted) | 0.500 [0.883, 0.943]" in renderer.render("comparison main")
    page = copy / "page.md"
    page.write_text((ROOT / "README.md").read_text().replace("results/real-pairs-spotify-albums", "main"))
    assert renderer.stale_pages([page]) == [page]


def test_the_readme_is_short_and_links_only_existing_pages():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link
    assert {path.name for path in (ROOT / "docs").glob("*.md")} <= {Path(link).name for link in
                                                                   re.findall(r"\]\((docs/[^)#]+)", readme)}


def test_no_page_needs_a_plus_to_set_a_key():
    """Every setting the docs use has a default in its config group (`+key=` appends a key Hydra lacks)."""
    for page in _renderer().PAGES:
        assert not re.findall(r"(?<![\w+\-])\+[a-z_]+\.[a-z_.]+=", page.read_text()), page.name


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_pages_reaches_a_page_and_a_heading():
    pages = _renderer().PAGES
    anchors = {page.resolve(): {_slug(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)} for page in pages}
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]*\.md)?#?([\w\-]*)\)", page.read_text()):
            linked = (page.parent / target).resolve() if target else page.resolve()
            assert linked.is_file(), (page.name, target)
            assert not anchor or anchor in anchors[linked], (page.name, target, anchor)
