import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covers.backbones import MissingWeightsError, create_backbone, create_model
from covers.images import CoverError, load_cover
from covers.inputs import handcrafted_features

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name,pretrained,size", [
    ("efficientnet_lite0", True, 64), ("efficientnet_lite2", True, 64), ("resnet50", False, 64), ("small_cnn", False, 32),
])
def test_backbone_forward_backward(name, pretrained, size):
    model = create_model(name, n_classes=3, pretrained=pretrained)
    pixels = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    features = model.embed(pixels)
    assert features.shape == (2, model.info.embed_dim)
    logits = model(pixels)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert model.head[1].weight.grad is not None
    assert all(p.requires_grad for p in model.parameters())  # fine-tuning: every layer trainable


def test_pretrained_lite_weights_are_loaded_not_random():
    first, info = create_backbone("efficientnet_lite0", pretrained=True)
    second, _ = create_backbone("efficientnet_lite0", pretrained=True)
    assert info.weights and Path(info.weights).is_file()
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_normalisation_is_the_one_the_checkpoint_was_trained_with(name, tmp_path, covers_loaded):
    """The checkpoint's first batch norm learnt the statistics of its stem's outputs on its training
    inputs: on real covers, (pixel − 127) / 128 reproduces them; ImageNet's mean/std or no
    normalisation do not. (Its own classifier also names scikit-image's sample photos.)"""
    from dataclasses import replace

    from skimage import data

    from covers.backbones import IMAGENET_MEAN, IMAGENET_STD, PixelNormaliser, _load_state
    from covers.inputs import pixels_first

    backbone, info = create_backbone(name, pretrained=True)
    backbone.eval()
    net = backbone.net
    covers = covers_loaded.items.sample(48, random_state=0)["cover_path"]
    images = np.stack([load_cover(p, info.input_size) for p in covers])

    def mismatch(normalisation) -> tuple[float, float]:
        with torch.no_grad():
            stem = net._conv_stem(PixelNormaliser(normalisation)(pixels_first(images)))
        live = net._bn0.running_var > 1e-4  # a few channels are dead (variance ~0)
        mean, var = stem.mean((0, 2, 3))[live], stem.var((0, 2, 3))[live]
        running_mean, running_var = net._bn0.running_mean[live], net._bn0.running_var[live]
        return (float(((mean - running_mean).abs() / running_var.sqrt()).median()),
                float((var / running_var).log().abs().median()))

    lite = mismatch(info)
    for other in (replace(info, mean=IMAGENET_MEAN, std=IMAGENET_STD), replace(info, mean=(0, 0, 0), std=(1, 1, 1))):
        offset, log_ratio = mismatch(other)
        assert lite[0] < 0.25 * offset and lite[1] < 0.5 * log_ratio, (lite, offset, log_ratio)
    assert lite[0] < 0.05 and lite[1] < 0.5

    state = _load_state(info.weights)
    photos = {"chelsea": {281, 282, 285}, "coffee": {967, 968, 504}}  # tabby/tiger/Egyptian cat; espresso/cup/mug
    for photo, classes in photos.items():
        Image.fromarray(getattr(data, photo)()).save(tmp_path / f"{photo}.png")
        image = load_cover(tmp_path / f"{photo}.png", info.input_size)
        with torch.no_grad():
            logits = backbone(PixelNormaliser(info)(pixels_first(image[None]))) @ state["_fc.weight"].T + state["_fc.bias"]
        assert int(logits.argmax()) in classes, photo


def test_missing_resnet50_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="weights_path"):
        create_backbone("resnet50", pretrained=True)
    with pytest.raises(MissingWeightsError, match="nope.pth"):
        create_backbone("resnet50", pretrained=True, weights_path=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnet5O")


def test_resnet50_weights_path_is_used(tmp_path):
    from torchvision.models import resnet50

    reference = resnet50(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r50.pth")
    model, info = create_backbone("resnet50", pretrained=True, weights_path=str(tmp_path / "r50.pth"))
    assert info.weights == str(tmp_path / "r50.pth")
    assert torch.equal(model.net.conv1.weight, reference.conv1.weight)


@pytest.mark.slow
def test_main_job_refuses_pretrained_resnet50_without_weights(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}", "experiment=covers_m1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={"TORCH_HOME": str(tmp_path), "PATH": "/usr/bin"},
    )
    assert result.returncode != 0 and "resnet50-11ad3fa6.pth" in result.stderr


@pytest.fixture(scope="module")
def bad_covers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_covers")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    rgb.save(folder / "ok.jpg")
    data = (folder / "ok.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("L").save(folder / "grey.jpg")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(folder / "alpha.png")
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    Image.new("RGB", (10_000, 10_000), (200, 10, 10)).save(folder / "huge.jpg", quality=50)
    (folder / "text.jpg").write_text("not an image")
    return folder


@pytest.mark.parametrize("name", ["ok.jpg", "cmyk.jpg", "grey.jpg", "alpha.png", "huge.jpg"])
def test_unusual_covers_load_as_rgb(bad_covers, name):
    image = load_cover(bad_covers / name, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    if name == "alpha.png":
        assert image.min() == 255  # fully transparent → the white background
    if name == "huge.jpg":
        assert abs(int(image[..., 0].mean()) - 200) <= 3


@pytest.mark.parametrize("name,reason", [("truncated.jpg", "corrupt"), ("tiny.png", "too small"),
                                         ("text.jpg", "not a usable image"), ("absent.jpg", "missing")])
def test_bad_covers_raise_with_reason(bad_covers, name, reason):
    with pytest.raises(CoverError, match=reason):
        load_cover(bad_covers / name, 64)


def test_random_forest_features_are_deterministic(covers_loaded):
    paths = covers_loaded.items["cover_path"].iloc[:2]
    first = [handcrafted_features(load_cover(p, 256)) for p in paths]
    again = handcrafted_features(load_cover(paths.iloc[0], 256))
    assert first[0].shape == (105,) and np.isfinite(first[0]).all()
    assert np.array_equal(first[0], again)
    assert not np.array_equal(first[0], first[1])
    np.testing.assert_allclose(first[0][:64].sum(), 1.0, rtol=1e-5)  # colour histogram fractions


@pytest.mark.slow
def test_checkpoint_evaluation_reproduces_training_metrics(discogs_covers_csv, bad_covers, tmp_path):
    csv = discogs_covers_csv(tmp_path / "small.csv", 24)
    table = pd.read_csv(csv)
    bad = pd.DataFrame({"path": [str(bad_covers / "truncated.jpg"), str(bad_covers / "text.jpg")],
                        "source": "discogs", "genre": "pop", "md5": ["bad1", "bad2"]})
    pd.concat([table, bad]).to_csv(csv, index=False)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), f"paths.root_dir={tmp_path}", "trainer.progress=false",
         "branches=[covers]", "covers.mode=finetune", "covers.model.backbone=small_cnn", "covers.model.pretrained=false",
         f"covers.data.loader.csv_path={csv}", "covers.data.name=small", "trainer.max_epochs=2", "trainer.lr=1e-3",
         "split=random", "split.val_fraction=0.2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = Path(result.stdout.strip().splitlines()[-1].split("Run folder: ")[1]) / "covers"
    trained = json.loads((run / "metrics.json").read_text())
    problems = pd.read_csv(run / "cover_problems.csv")
    assert len(problems) == 2 and trained["cover_problems"] == 2
    split = pd.read_csv(trained["split_file"])
    test_ids = set(split.loc[split["split"] == "test", "item_id"])
    test_rows = table[[str(Path(p).with_suffix("")) in test_ids for p in table["path"]]]
    test_csv = tmp_path / "test_only.csv"
    test_rows.to_csv(test_csv, index=False)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_covers.py"), str(run), str(test_csv),
                             "--out", str(tmp_path / "eval")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["n"] == trained["n"]
    assert evaluated["confusion"] == trained["confusion"]
    assert evaluated["accuracy"] == trained["accuracy"]
    scored = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    held_out = pd.read_csv(run / "predictions.csv").merge(scored, on="item_id", suffixes=("", "_evaluated"))
    assert len(held_out) == trained["n"]
    for label in ("rap", "country", "pop"):
        np.testing.assert_allclose(held_out[f"p_{label}"], held_out[f"p_{label}_evaluated"], atol=2e-4)

    bad.to_csv(tmp_path / "only_bad.csv", index=False)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate_covers.py"), str(run),
                             str(tmp_path / "only_bad.csv"), "--out", str(tmp_path / "eval_bad")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "none of the 2 covers" in result.stderr
    assert len(pd.read_csv(tmp_path / "eval_bad" / "cover_problems.csv")) == 2


def test_most_typical_picks_the_most_confident_covers_of_each_predicted_class():
    from covers.explain import most_typical

    predictions = pd.DataFrame({"predicted": ["a", "a", "b", "a"], "p_a": [0.6, 0.9, 0.1, 0.7],
                                "p_b": [0.4, 0.1, 0.9, 0.3], "item_id": ["x", "y", "z", "w"]})
    typical = most_typical(predictions, ["a", "b"], per_class=2)
    assert list(typical["item_id"]) == ["y", "w", "z"]
    assert list(typical["typical_of"]) == ["a", "a", "b"]


def test_class_specific_augmentation_table():
    from covers.augment import build_class_augment

    transforms = build_class_augment({"rap": ["hflip", "crop", "colour_jitter"], "jazz": ["hflip"]}, ["rap", "pop"],
                                     size=32)  # a five-class table on a three-class run: jazz's row is unused
    assert transforms[1] is None
    image = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    out = transforms[0](image)
    assert out.shape == image.shape and out.dtype == torch.uint8
    assert len(transforms) == 2
    with pytest.raises(ValueError, match="unknown transform"):
        build_class_augment({"rap": ["hflip"], "jazz": ["mirror"]}, ["rap"], 32)
    with pytest.raises(ValueError, match="none of the label set"):
        build_class_augment({"jazz": ["hflip"]}, ["rap"], 32)


def test_m4_weights_are_inverse_validation_precision(tmp_path):
    from covers.train import precision_class_weights

    # val: rap predicted 4× (3 right) → 0.75; pop predicted 2× (1 right) → 0.5; test rows ignored.
    table = pd.DataFrame({"split": ["val"] * 6 + ["test"] * 2,
                          "label": ["rap", "rap", "rap", "pop", "pop", "rap", "pop", "pop"],
                          "predicted": ["rap", "rap", "rap", "rap", "pop", "pop", "rap", "rap"]})
    table["p_rap"] = (table["predicted"] == "rap").astype(float)
    table["p_pop"] = 1 - table["p_rap"]
    table.to_csv(tmp_path / "predictions.csv", index=False)
    weights = precision_class_weights(tmp_path / "predictions.csv", ["rap", "pop"])
    raw = np.array([1 / 0.75, 1 / 0.5])
    np.testing.assert_allclose(weights, raw / raw.mean())


@pytest.mark.slow
def test_reproduction_table_resumes_and_stops_at_once_without_weights(discogs_covers_csv, tmp_path, monkeypatch):
    from covers.reproduce import NOT_FINISHED, format_table, reproduce

    import covers.reproduce

    # The working directory stands for the checkout: the table's artifacts (splits, caches) go under it.
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setattr(covers.reproduce, "CHECKOUT", here)
    csv = discogs_covers_csv(here / "small.csv", 30)
    overrides = [f"covers.data.loader.csv_path={csv}", "covers.data.name=small", "trainer.progress=false",
                 "+covers.n_estimators=50"]
    out = here / "table"

    frames: list[pd.DataFrame] = []

    def run(root: Path = here) -> pd.DataFrame:
        rooted = [o.replace(str(here), str(root)) for o in overrides]
        frames.clear()
        return reproduce(root / "table", ["paper3"], ["group"], "frozen", "efficientnet_lite0", rooted,
                         on_row=frames.append)

    first = run()
    # The table after every row that ended, the rows still to come noted so (a stopped call leaves that).
    assert len(frames) == len(first) == 7
    assert [list(frame["note"].eq(NOT_FINISHED)).count(True) for frame in frames] == [6, 5, 4, 3, 2, 1, 0]
    pd.testing.assert_frame_equal(frames[-1], first)
    models = first[first["model"].isin(["RF", "M1", "M2", "M3", "M4"])]
    assert list(models["model"]) == ["RF", "M1", "M2", "M3", "M4"]
    assert models["n"].nunique() == 1  # every model on the same test items
    for row in models.itertuples():
        assert row.ci95[0] <= row.accuracy <= row.ci95[1]
    table = format_table(first, "frozen", "efficientnet_lite0")
    assert "74.00%" in table and "50.57%" in table and "needs covers.mode=finetune" in table
    assert "genre guessed from source alone" in table

    def stamps(root: Path = here) -> dict[str, int]:
        return {m: (root / "table" / "paper3-group" / m / "metrics.json").stat().st_mtime_ns for m in models["model"]}

    before = stamps()
    again = run()  # everything finished: nothing is trained again
    assert stamps() == before
    # Taken before any row started: the first table written already lists every finished row.
    assert set(frames[0].loc[frames[0]["note"].eq(NOT_FINISHED), "model"]) == {"M5", "confound"}
    assert not first["reused"].dropna().any() and again["reused"].dropna().all()  # NaN: M5/confound rows
    pd.testing.assert_frame_equal(again.drop(columns=["ci95", "reused"]), first.drop(columns=["ci95", "reused"]))

    # The checkout copied to another path (a lent machine's copy of the repository, or the rows it made
    # brought back), with the predictions compressed as results/ commits them: the rows' configs differ
    # only by the checkout's root, so every row is reused there.
    there = tmp_path / "there"
    shutil.copytree(here, there)
    for predictions in (there / "table").rglob("predictions.csv"):
        subprocess.run(["gzip", str(predictions)], check=True)
    monkeypatch.chdir(there)
    monkeypatch.setattr(covers.reproduce, "CHECKOUT", there)
    elsewhere = stamps(there)
    assert str(here) in (there / "table" / "paper3-group" / "M4" / "config.yaml").read_text()
    assert run(there)["reused"].dropna().all() and stamps(there) == elsewhere
    monkeypatch.chdir(here)
    monkeypatch.setattr(covers.reproduce, "CHECKOUT", here)

    # M3 cut off after training, before its report: it is finished from last.pt; its predictions come out
    # the same, so M4, whose class weights come from them, is left alone, as are RF, M1 and M2.
    m3_predictions = out / "paper3-group" / "M3" / "predictions.csv"
    (out / "paper3-group" / "M3" / "metrics.json").unlink()
    resumed = run()
    after = stamps()
    assert {m for m in before if after[m] != before[m]} == {"M3"}
    accuracy = dict(zip(resumed["model"], resumed["accuracy"]))
    assert accuracy["M3"] == dict(zip(first["model"], first["accuracy"]))["M3"]
    # M3's predictions changed under M4 (modification times alone would not tell: set back on purpose):
    # M4 is trained again with class weights from them.
    stat = m3_predictions.stat()
    changed = pd.read_csv(m3_predictions)
    changed.loc[changed["split"] == "val", "predicted"] = changed["label"]
    changed.to_csv(m3_predictions, index=False)
    os.utime(m3_predictions, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    run()
    assert {m for m, stamp in stamps().items() if stamp != after[m]} == {"M4"}

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_weights"))
    with pytest.raises(MissingWeightsError, match="weights_path"):
        reproduce(tmp_path / "resnet", ["paper3"], ["group"], "finetune", "resnet50", overrides)
    assert not (tmp_path / "resnet").exists()  # failed before the first row, not after the Random Forest


def test_class_specific_augmentation_reaches_only_its_class():
    """M5: a rap cover is flipped in some draws, a pop cover never (its row of the table is empty)."""
    from covers.augment import build_class_augment
    from covers.predict import CoverImages

    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[:, 8:] = 255  # black left, white right: a flip shows
    images = np.stack([image] * 4)
    y = np.array([0, 1, 1, 0])  # rap, pop, pop, rap (the class, not the position, picks the transform)
    dataset = CoverImages(images, y, build_class_augment({"rap": ["hflip"]}, ["rap", "pop"], 16))
    torch.manual_seed(0)
    flipped = {i: 0 for i in range(4)}
    for _ in range(40):
        for i in range(4):
            x, label = dataset[i]
            assert label == y[i]
            flipped[i] += int(x[0, 0, 0] > 127)  # the top-left pixel turned white
    assert flipped[0] > 5 and flipped[3] > 5 and flipped[1] == 0 and flipped[2] == 0


def test_cover_models_take_raw_pixels_and_normalise_them_as_the_backbone_wants():
    """Loaders hand uint8 pixels to the model, which normalises them on its device: the logits equal the
    backbone and head run on images normalised by hand, and a float (already normalised) input is refused."""
    from covers.predict import CoverImages

    torch.manual_seed(0)
    model = create_model("small_cnn", 3, pretrained=False).eval()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    pixels, _ = CoverImages(images, np.zeros(4, dtype=np.int64))[2]
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 32, 32)
    mean, std = np.array(model.info.mean), np.array(model.info.std)
    by_hand = torch.from_numpy(((images / 255.0 - mean) / std).astype(np.float32)).permute(0, 3, 1, 2)
    batch = torch.stack([CoverImages(images, np.zeros(4, dtype=np.int64))[i][0] for i in range(4)])
    with torch.no_grad():
        np.testing.assert_allclose(model(batch).numpy(), model.head(model.backbone(by_hand)).numpy(), atol=1e-5)
    with pytest.raises(TypeError, match="raw pixels, uint8"):
        model(by_hand)
