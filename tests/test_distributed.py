"""Data-parallel fine-tuning under torchrun (gloo, two CPU processes) against one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path, launcher, *overrides, env=None):
    result = subprocess.run([*launcher, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}",
                             "trainer.progress=false", *overrides], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_and_resumes(tmp_path, discogs_covers_csv):
    """Two gloo processes with the same global batch fine-tune the model one process fine-tunes (the small
    CNN, every layer trained, batch norm frozen and no dropout so the processes' parts add up to the
    whole batch; SGD, whose step is linear in the gradient, where Adam's would magnify float noise; batch 7 so each epoch has several steps with uneven parts); the run is cut after an
    epoch and resumed; rank 0 alone writes the run folder."""
    csv = discogs_covers_csv(tmp_path / "small.csv", 14)
    common = ["branches=[covers]", "covers.mode=finetune", "covers.model.backbone=small_cnn",
              "covers.model.pretrained=false", "covers.model.dropout=0", "trainer.batchnorm=frozen", f"covers.data.loader.csv_path={csv}",
              "covers.data.name=small", "split=random", "trainer.max_epochs=3", "trainer.patience=10",
              "trainer.optimizer=sgd", "trainer.lr=0.05", "trainer.batch_size=7"]
    _run(tmp_path, [sys.executable], *common, f"hydra.run.dir={tmp_path / 'one'}")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = tmp_path / "ddp"
    _run(tmp_path, torchrun, *common, "trainer.stop_after_epoch=1", f"hydra.run.dir={ddp}", env={"TMPDIR": str(scratch)})
    assert len(pd.read_csv(ddp / "covers" / "history.csv")) == 1
    stdout = _run(tmp_path, torchrun, *common, f"hydra.run.dir={ddp}", env={"TMPDIR": str(scratch)})

    assert stdout.count("Run folder: ") == 1 and f"Run folder: {ddp}" in stdout  # rank 0 alone reports
    assert not list(scratch.glob("genrefusion-rank*"))  # rank 1's scratch run folders are gone
    resume = torch.load(ddp / "covers" / "last.pt", weights_only=True)
    assert len(resume["torch_rng"]) == 2  # both processes trained: each one's random state is kept

    one, two = (pd.read_csv(tmp_path / name / "covers" / "history.csv") for name in ("one", "ddp"))
    assert len(one) == len(two) == 3
    for column in ("train_loss", "train_acc", "val_loss", "val_acc"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-5, atol=1e-6, err_msg=column)
    weights = [torch.load(tmp_path / name / "covers" / "checkpoint.pt", weights_only=True)["model_state"]
               for name in ("one", "ddp")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-4, atol=1e-5)  # float summation order
    predictions = [pd.read_csv(tmp_path / name / "covers" / "predictions.csv") for name in ("one", "ddp")]
    assert list(predictions[0]["item_id"]) == list(predictions[1]["item_id"])
    probabilities = [p.filter(like="p_").to_numpy() for p in predictions]
    np.testing.assert_allclose(probabilities[1], probabilities[0], atol=1e-5)
    metrics = [json.loads((tmp_path / name / "covers" / "metrics.json").read_text()) for name in ("one", "ddp")]
    assert metrics[0]["confusion"] == metrics[1]["confusion"]
