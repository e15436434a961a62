"""A lent GPU machine's carry (scripts/device_kit.py, scripts/device_session.sh), rehearsed on the CPU: a kit
is built in a copy of the checkout and run there as the lent machine runs it (another root, the copied tree
and the kit alone, no .git); what comes back is what the command wrote, and every third-party package the
part imported is on the machine's image or among the kit's wheels."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Put on PYTHONPATH with $IMPORT_PROBE set: every process started records the top-level modules it imports.
SITECUSTOMIZE = '''
import os, sys
_path = os.environ.get("IMPORT_PROBE")
if _path:
    _seen = set()
    def _record(event, args):
        if event == "import" and (top := args[0].partition(".")[0]) not in _seen:
            _seen.add(top)
            with open(_path, "a") as file:
                file.write(top + "\\n")
    sys.addaudithook(_record)
'''


def _kit_module():
    spec = importlib.util.spec_from_file_location("device_kit", ROOT / "scripts" / "device_kit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_checkout(dest: Path) -> Path:
    """What the device tool sends: the tracked files and the untracked ones git does not ignore, as a new
    repository with one commit (so a kit built there records it)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run([*git, *command], cwd=dest, check=True)
    return dest


def build_kit(checkout: Path, arguments: list[str], data_root: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), **({"GENREFUSION_DATA": str(data_root)} if data_root else {})}
    result = subprocess.run([sys.executable, "scripts/device_kit.py", *arguments], cwd=checkout, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    part = arguments[0]
    return json.loads((checkout / ".devkit" / part / "kit.json").read_text())


def run_session(checkout: Path, kit: str, work: Path, seconds: int = 600) -> tuple[Path, set[str]]:
    """``bash scripts/device_session.sh KIT`` in ``checkout`` with $OUT a new folder; returns it and the
    top-level modules every process of the session imported."""
    probe = work / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = work / f"out-{time.monotonic_ns()}"
    imported = probe / f"{out.name}.txt"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(probe),
           "IMPORT_PROBE": str(imported)}
    result = subprocess.run(["bash", "scripts/device_session.sh", kit, str(seconds)], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=seconds + 120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, set(imported.read_text().split())


def not_on_the_machine(imported: set[str], kit_spec: dict) -> set[str]:
    """Distributions installed here whose modules the part imported, that neither the lent machine's image
    nor the kit's wheels hold (a module not installed here was an optional import that failed)."""
    kit = _kit_module()
    carried = kit.DEVICE_IMAGE | {kit.normalise(r.partition("==")[0]) for r in kit_spec["requirements"]}
    distributions = importlib.metadata.packages_distributions()
    return {kit.normalise(dist) for module in imported - set(sys.stdlib_module_names)
            for dist in distributions.get(module, []) if kit.normalise(dist) not in carried | {"genrefusion"}}


def archive(out: Path) -> tarfile.TarFile:
    return tarfile.open(out / "results.tar.gz")


@pytest.mark.slow
def test_the_scoring_kit_runs_the_benchmark_in_a_bare_copy_and_brings_it_back(main_job_run, data_root, tmp_path):
    _, run_dir = main_job_run
    there = copy_checkout(tmp_path / "there")
    kit = build_kit(there, ["scoring", "--model-dir", str(run_dir), "--rows", "40", "--jobs", "1", "--distinct", "4",
                            "--no-wheels"], data_root)
    assert kit["command"][:2] == ["benchmarks/score_throughput.py", ".devkit/scoring/model"]
    assert kit["bytes"]["total"] == kit["bytes"]["tree"] + kit["bytes"]["kit"] < kit["bytes"]["limit"]
    assert kit["commit"]
    shutil.rmtree(there / ".git")  # the machine's copy may have none: the kit says which commit it runs

    out, imported = run_session(there, ".devkit/scoring", tmp_path)
    assert json.loads((out / "session.json").read_text())["status"] == 0
    with archive(out) as tar:
        assert tar.getnames() == ["benchmarks/results/score_throughput.json"]
        result = json.load(tar.extractfile("benchmarks/results/score_throughput.json"))
    assert result["n_rows"] == 40 and result["distinct_files"] == 4 and result["complete"]
    assert {name: run["output_rows"] for name, run in result["runs"].items()} == \
        {"fused": 40, "covers only": 40, "audio only": 40}
    assert result["machine"]["git_commit"] == kit["commit"]
    assert {"torch", "librosa", "soundfile"} <= imported  # the probe sees the feature workers' imports
    assert not_on_the_machine(imported, kit) == set()


def _renderer():
    spec = importlib.util.spec_from_file_location("render", ROOT / "docs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_table_kit_fine_tunes_rows_there_which_a_checkout_here_reuses(pack, tmp_path):
    """The table fine-tuned from a pack end to end (a tiny Lite0 fine-tune of every row of one cell, two rows
    at a time in their own processes) as a lent machine runs it; brought back, its rows are reused and
    rendered beside the frozen table made here from the same pack."""
    pack_dir, _ = pack
    there = copy_checkout(tmp_path / "there")
    tiny = ["trainer.max_epochs=1", "trainer.batch_size=8", "trainer.num_workers=0", "+covers.n_estimators=20"]
    kit = build_kit(there, ["table", "--pack", str(pack_dir), "--backbone", "efficientnet_lite0", "--labels", "paper3",
                            "--protocols", "group", "--parallel", "2", "--no-wheels", "--", *tiny])
    overrides = kit["command"][kit["command"].index("--") + 1:]
    assert "trainer.channels_last=true" in overrides and "trainer.num_workers=2" not in overrides
    table = kit["collect"][0]
    assert table == "results/covers-reproduction-gpu-finetune-lite0"

    out, imported = run_session(there, ".devkit/table", tmp_path)
    assert json.loads((out / "session.json").read_text())["status"] == 0
    models = ["RF", "M1", "M2", "M3", "M4", "M5"]
    cell = there / table / "paper3-group"
    with archive(out) as tar:
        names = set(tar.getnames())
        for model in models:
            assert {f"{table}/paper3-group/{model}/{name}" for name in
                    ("config.yaml", "metrics.json", "predictions.csv", "row.json", "inputs.json")} <= names
        assert {f"{table}/results.json", f"{table}/table.md"} <= names
        assert not any(name.endswith(".pt") for name in names)
        finished = json.load(tar.extractfile(f"{table}/results.json"))
        assert finished["complete"]
        first = {row["model"]: row for row in finished["rows"]}
        # Brought back: unpacked into another checkout (another root) with the same kit and the predictions
        # compressed as results/ commits them.
        here = copy_checkout(tmp_path / "here")
        shutil.copytree(there / ".devkit", here / ".devkit")
        tar.extractall(here, filter="data")
    assert not_on_the_machine(imported, kit) == set() and "hydra" in imported
    assert len({first[m]["n"] for m in models}) == 1 and not any(first[m]["reused"] for m in models)
    for model in models:
        record = json.loads((cell / model / "row.json").read_text())
        assert record["checkout"] == str(there)  # the copy's own code ran, not this checkout's
        assert record["command"].startswith("genrefusion reproduce-covers --mode finetune --backbone efficientnet_lite0")
        assert first[model]["machine"] == f"{record['machine']['cpu']}, {record['machine']['cpu_cores']} cores"
    # M4 and M5 started after M3's predictions were written, and took their class weights from them.
    m3_done = (cell / "M3" / "predictions.csv").stat().st_mtime_ns
    assert all((cell / m / "config.yaml").stat().st_mtime_ns >= m3_done for m in ("M4", "M5"))
    card = json.loads((cell / "M1" / "model_card.json").read_text())
    assert Path(card["data_loader"]["csv_path"]).is_relative_to(there / ".devkit" / "table" / "pack")
    text = (there / table / "table.md").read_text()
    assert "made on (commit)" in text and "Commands that made the rows" in text and "from the pack" in text

    for predictions in (here / table).rglob("predictions.csv"):
        subprocess.run(["gzip", str(predictions)], check=True)
    run_session(here, ".devkit/table", tmp_path)
    rows = {row["model"]: row for row in json.loads((here / table / "results.json").read_text())["rows"]}
    assert all(rows[model]["reused"] for model in models)
    assert [rows[m]["accuracy"] for m in models] == [first[m]["accuracy"] for m in models]

    # The frozen table from the same pack, here, and the two side by side as docs/ renders them: the Random
    # Forest, the same model in both, differs by exactly 0; M5 has no frozen row but its gain over M4.
    frozen = tmp_path / "frozen"
    result = subprocess.run([sys.executable, "scripts/reproduce_covers.py", "--labels", "paper3", "--protocols", "group",
                             "--pack", ".devkit/table/pack", "--out", str(frozen), "--", "trainer.progress=false", *tiny],
                            cwd=here, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(here)})
    assert result.returncode == 0, result.stderr[-3000:]
    renderer = _renderer()
    side_by_side = renderer.covers_tables(str(frozen), str(here / table)).splitlines()
    rf = next(line for line in side_by_side if "| group | RF |" in line)
    assert "| +0.000 [+0.000, +0.000] | 1.000 |" in rf
    m1 = next(line for line in side_by_side if "| group | M1 |" in line)
    assert m1.count("[") == 3 and "not run yet" not in m1
    assert any(line.startswith("| paper3 | group | ") and line.count("|") == 5 for line in side_by_side)  # M5 − M4
    not_yet = renderer.covers_tables(str(frozen), str(tmp_path / "absent"))
    assert "not run yet" in not_yet and "M5 − M4" not in not_yet
    assert "stopped before every row" not in "\n".join(side_by_side)
    stopped = json.loads((here / table / "results.json").read_text()) | {"complete": False}
    (here / table / "results.json").write_text(json.dumps(stopped))
    assert "stopped before every row was finished" in renderer.covers_tables(str(frozen), str(here / table))


def test_a_command_past_its_time_is_stopped_with_its_children_and_its_files_come_back(tmp_path):
    """``run`` alone (standard library only): the kit's command and a process it started, one that ignores
    the request to stop, are ended at the time limit, and the files written so far come back without
    checkpoints."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "device_kit.py", checkout / "scripts")
    (checkout / "work.py").write_text(
        "import pathlib, subprocess, sys, time\n"
        "out = pathlib.Path('written'); out.mkdir()\n"
        "(out / 'row.json').write_text('{}'); (out / 'last.pt').write_bytes(b'0')\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
        "(out / 'child.pid').write_text(str(child.pid))\n"
        "print('started', flush=True); time.sleep(120)\n")
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "kit.json").write_text(json.dumps({"part": "test", "command": ["work.py"], "collect": ["written"]}))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "scripts/device_kit.py", "run", str(kit), "--seconds", "3",
                             "--out", str(tmp_path / "out")], cwd=checkout, capture_output=True, text=True, timeout=90)
    assert result.returncode == 124 and time.monotonic() - started < 60
    session = json.loads((tmp_path / "out" / "session.json").read_text())
    assert session["status"] == 124 and sorted(session["collected"]) == ["written/child.pid", "written/row.json"]
    assert "started" in (tmp_path / "out" / "session.log").read_text()
    child = int((checkout / "written" / "child.pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the command's child process outlived the time limit")
    with archive(tmp_path / "out") as tar:
        assert sorted(tar.getnames()) == ["written/child.pid", "written/row.json"]


def test_a_kit_over_the_carry_limit_or_outside_the_checkout_is_refused(pack, tmp_path):
    pack_dir, _ = pack
    checkout = copy_checkout(tmp_path / "checkout")

    def build(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "scripts/device_kit.py", "table", "--pack", str(pack_dir), "--backbone",
                               "efficientnet_lite0", "--no-wheels", *arguments], cwd=checkout, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(checkout)})

    over = build("--carry-limit-mib", "1")
    assert over.returncode == 2 and "over the 1 MiB one command carries" in over.stderr
    assert not (checkout / ".devkit" / "table").exists()
    outside = build("--out", str(tmp_path / "elsewhere"))
    assert outside.returncode == 2 and "outside the checkout" in outside.stderr
    assert not (tmp_path / "elsewhere").exists()
    wrong_size = subprocess.run([sys.executable, "scripts/device_kit.py", "table", "--pack", str(pack_dir), "--no-wheels"],
                                cwd=checkout, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": str(checkout)})
    assert wrong_size.returncode == 2 and "260" in wrong_size.stderr  # a Lite0 pack for the Lite2 table


@pytest.mark.parametrize("wheel, installs", [
    ("hydra_core-1.3.8-py3-none-any.whl", True),
    ("soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl", True),
    ("soxr-1.1.0-cp312-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", True),
    ("cffi-2.1.1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
    ("numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl", False),  # another Python
    ("soxr-1.1.0-cp313-abi3-manylinux_2_28_x86_64.whl", False),  # stable ABI from a newer Python
    ("cffi-2.1.1-cp312-cp312-manylinux_2_17_aarch64.whl", False),  # another processor
    ("cffi-2.1.1-cp312-cp312-macosx_11_0_arm64.whl", False),
])
def test_only_wheels_for_the_lent_machines_python_and_processor_are_carried(wheel, installs):
    assert _kit_module().installs_there(wheel) is installs


def test_a_requirement_neither_the_image_nor_the_kit_holds_is_named(tmp_path):
    """Wheels are installed there with --no-deps: each one's requirements (markers read as the machine's
    CPython 3.12 on Linux) must be on the image or among the other wheels."""
    def wheel(name: str, *requires: str) -> None:
        with zipfile.ZipFile(tmp_path / f"{name}-1.0-py3-none-any.whl", "w") as archive:
            archive.writestr(f"{name}-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: " + name + "\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires))

    wheel("soundfile", "cffi>=1.0", "numpy")  # numpy: on the image
    wheel("audioread", 'standard-aifc; python_version >= "3.13"')  # not for 3.12
    wheel("omegaconf", "antlr4-python3-runtime==4.9.*", 'dataclasses; python_version == "3.6"')
    wheel("antlr4_python3_runtime")
    wheel("pooch", "Platformdirs>=2.5", 'pytest-cov; extra == "test"')  # an extra is not installed
    kit = _kit_module()
    assert kit.unmet_requirements(tmp_path) == ["Platformdirs (for pooch-1.0-py3-none-any.whl)",
                                                "cffi (for soundfile-1.0-py3-none-any.whl)"]
    wheel("cffi", "pycparser")
    wheel("platformdirs")
    assert kit.unmet_requirements(tmp_path) == ["pycparser (for cffi-1.0-py3-none-any.whl)"]
