import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run_main(tmp_path, *overrides, timeout=600):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}",
                             "trainer.progress=false", *overrides],
                            capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Run folder:" in result.stdout
    run_line = next(line for line in result.stdout.splitlines() if line.startswith("Run folder: "))
    return result.stdout, Path(run_line.split("Run folder: ")[1])


def test_audio_branch_writes_a_complete_run_folder(tmp_path):
    stdout, run_dir = _run_main(tmp_path, "branches=[audio]", "audio.trainer.max_epochs=30")  # GTZAN audio: its artist-filtered split by default
    assert "audio-only (feature_mlp)" in stdout
    audio = run_dir / "audio"
    for name in ("history.csv", "metrics.json", "report.txt", "confusion.png", "checkpoint.pt",
                 "model_card.json", "predictions.csv", "reference_logreg/metrics.json"):
        assert (audio / name).is_file(), name
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    metrics = json.loads((audio / "metrics.json").read_text())
    assert metrics["protocol"] == "predefined" and metrics["labels"] == ["rap", "country", "pop"]
    # Fault-filtered test set: the rap/country/pop clips among its 290.
    assert metrics["n"] == sum(metrics["split_counts"][c]["test"] for c in metrics["labels"])
    assert metrics["reference_logreg"]["n"] == metrics["n"]
    card = json.loads((audio / "model_card.json").read_text())
    assert card["machine"]["cpu_cores"] and card["metrics"]["ci95"]["accuracy"][0] <= metrics["accuracy"]


def test_main_job_prints_image_audio_and_fused_rows(main_job_run):
    """The default main job (audio + covers + fusion) on a 150-cover subset of the Discogs covers."""
    stdout, run_dir = main_job_run
    for row in ("image-only (efficientnet_lite0_frozen) · pairing: synthetic",
                "audio-only (feature_mlp) · pairing: synthetic", "fused (weighted) · pairing: synthetic"):
        assert row in stdout
    assert (run_dir / "fusion" / "confusions_pairing-synthetic.png").is_file()
    assert str(run_dir / "fusion" / "confusions_pairing-synthetic.png") in stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert len({m["n"] for m in results.values()}) == 1  # the three rows share their test items
    for branch in ("audio", "covers"):
        assert (run_dir / branch / "checkpoint.pt").is_file() and (run_dir / branch / "predictions.csv").is_file()


def test_wrong_config_key_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}", "+trainer.lrr=0.1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode != 0 and "unknown key(s) ['lrr']" in result.stderr
