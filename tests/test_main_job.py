import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_main_job_writes_a_complete_run_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}",
         "trainer.progress=false", "audio.trainer.max_epochs=30", "split=fault_filtered"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "audio-only (feature_mlp)" in result.stdout and "Run folder:" in result.stdout
    run_dir = Path(result.stdout.strip().splitlines()[-1].split("Run folder: ")[1])
    audio = run_dir / "audio"
    for name in ("history.csv", "metrics.json", "report.txt", "confusion.png", "checkpoint.pt",
                 "model_card.json", "predictions.csv"):
        assert (audio / name).is_file(), name
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    metrics = json.loads((audio / "metrics.json").read_text())
    assert metrics["protocol"] == "predefined" and metrics["labels"] == ["rap", "country", "pop"]
    # Fault-filtered test set: the rap/country/pop clips among its 290.
    assert metrics["n"] == sum(metrics["split_counts"][c]["test"] for c in metrics["labels"])
    card = json.loads((audio / "model_card.json").read_text())
    assert card["machine"]["cpu_cores"] and card["metrics"]["ci95"]["accuracy"][0] <= metrics["accuracy"]


def test_wrong_config_key_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}", "+trainer.lrr=0.1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode != 0 and "unknown key(s) ['lrr']" in result.stderr
