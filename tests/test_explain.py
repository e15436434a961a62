"""Looking inside the models: embeddings export, the map, top losses and class-activation maps."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


class _ChannelMaps(nn.Module):
    """A stand-in backbone whose feature maps are the image's own channels (red, green, blue), through an
    identity 1×1 convolution (a layer with weights, as a real backbone's last one has)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        self.map_output = nn.Identity()

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.map_output(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps(x).mean(dim=(2, 3))


def _red_versus_blue():
    """A cover classifier whose class 0 is 'red' and class 1 'blue' (its evidence: where those pixels are)."""
    from covers.backbones import BackboneInfo, CoverClassifier

    head = nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]]))
        head.bias.zero_()
    info = BackboneInfo("channels", 32, (0, 0, 0), (1, 1, 1), 3, None)
    return CoverClassifier(_ChannelMaps(), info, head).eval()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "eigencam"])
def test_each_cam_method_runs_on_a_small_model(method):
    from covers.backbones import create_model
    from covers.explain import class_activation_maps

    torch.manual_seed(0)
    model = create_model("small_cnn", n_classes=3, pretrained=False).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    maps, proba = class_activation_maps(model, x, method)
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    np.testing.assert_allclose(proba, torch.softmax(model(x), 1).detach().numpy(), atol=1e-5)


def test_grad_cam_puts_its_mass_where_the_class_evidence_is():
    """Red only in the left half: the map for 'red' sits there; occluding its peak lowers the score."""
    from covers.explain import class_activation_maps

    model = _red_versus_blue()
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    image[0, 0, 8:24, 2:14] = 255  # red, left half
    image[0, 2, 20:28, 20:30] = 128  # a little blue, right half
    maps, proba = class_activation_maps(model, image, "gradcam", class_index=[0])
    assert proba[0].argmax() == 0
    assert maps[0][:, :16].sum() > 0.95 * maps[0].sum()
    peak = np.unravel_index(maps[0].argmax(), maps[0].shape)
    occluded = image.clone()
    occluded[0, :, max(0, peak[0] - 6):peak[0] + 6, max(0, peak[1] - 6):peak[1] + 6] = 0
    assert model(occluded)[0, 0] < model(image)[0, 0]
    blue_maps, _ = class_activation_maps(model, image, "gradcam", class_index=[1])
    assert blue_maps[0][:, 16:].sum() > 0.95 * blue_maps[0].sum()  # the other class: the other half


def test_top_losses_are_the_highest_loss_wrong_items():
    from engine.inspection import top_losses

    items = pd.DataFrame({"item_id": list("abcde"), "y": [0, 1, 0, 1, 0]})
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.05, 0.95]])
    worst = top_losses(items, proba, ["x", "z"], k=2)
    # Wrong: b (p_true 0.2), c (0.3), e (0.05); the two most confidently wrong are e then b.
    assert list(worst["item_id"]) == ["e", "b"]
    assert worst["loss"].tolist() == pytest.approx([-np.log(0.05), -np.log(0.2)])
    assert list(worst["predicted"]) == ["z", "x"]


def test_explain_writes_embeddings_map_top_losses_and_cams_for_both_branches(main_job_run, tmp_path):
    from covers.predict import cover_embeddings, cover_inputs, load_cover_model
    from engine.inspection import read_embeddings

    _, run_dir = main_job_run
    cache = run_dir.parents[3] / "artifacts" / "cache"  # the main job's: its embeddings are read, not recomputed
    assert cache.is_dir()
    for branch in ("covers", "audio"):
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "explain.py"), str(run_dir / branch), "--out",
                                 str(tmp_path / branch), "--no-progress", "--cache-dir", str(cache)],
                                capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert (tmp_path / branch / "map.png").stat().st_size > 10_000
        worst = pd.read_csv(tmp_path / branch / "top_losses.csv")
        assert (worst["label"] != worst["predicted"]).all() and worst["loss"].is_monotonic_decreasing
    for name in ("map_covers.png", "top_losses.png", "cam_gradcam.png", "typical_covers.png"):
        assert (tmp_path / "covers" / name).stat().st_size > 10_000, name
    items, vectors = read_embeddings(tmp_path / "covers" / "embeddings.parquet")
    assert set(items["split"]) == {"train", "val", "test"} and vectors.shape == (len(items), 1280)
    # The exported vectors are the branch's own embeddings of the same covers (computed here afresh).
    from data.config import run_items
    from engine.inference import read_checkpoint

    model, _ = load_cover_model(run_dir / "covers" / "checkpoint.pt")
    chosen = items.sample(5, random_state=0)
    own = run_items(read_checkpoint(run_dir / "covers" / "checkpoint.pt")).set_index("item_id")
    _, x = cover_inputs(model, own.loc[chosen["item_id"]].reset_index())
    np.testing.assert_allclose(vectors[chosen.index.to_numpy()], cover_embeddings(model, x), rtol=1e-5, atol=1e-5)
    audio_items, audio_vectors = read_embeddings(tmp_path / "audio" / "embeddings.parquet")
    assert audio_vectors.shape == (len(audio_items), 64)  # the feature MLP's last hidden layer
