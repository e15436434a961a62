"""musicnn in PyTorch: the checkpoint reader, the port against the original package, zero-shot genres."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from acquire.musicnn_weights import WHEEL, WHEEL_DIR, WHEEL_SHA256, WheelError, check_wheel, convert_wheel
from acquire.tf_checkpoint import CheckpointFormatError, read_checkpoint, read_index
from audio.musicnn import MODELS, TagGenres, load_musicnn

REFERENCE = Path(__file__).parent / "reference" / "musicnn_reference.csv"


@pytest.fixture(scope="module")
def wheel() -> Path:
    """The musicnn wheel ``make install`` downloaded (and converted)."""
    path = WHEEL_DIR / WHEEL
    assert path.is_file(), f"{path} is missing: `make install` downloads it"
    return path


@pytest.fixture(scope="module")
def msd_checkpoint(wheel, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    with zipfile.ZipFile(wheel) as archive:
        for suffix in (".index", ".data-00000-of-00001"):
            (folder / f"MSD{suffix}").write_bytes(archive.read(f"musicnn/MSD_musicnn/{suffix}"))
    return folder / "MSD"


def test_reader_gives_every_tensor_of_the_real_checkpoint(msd_checkpoint):
    entries = read_index(str(msd_checkpoint) + ".index")
    tensors = read_checkpoint(msd_checkpoint)
    assert set(tensors) == {name for name in entries if "/Adam" not in name}
    assert tensors["conv2d/kernel"].shape == (7, 38, 1, 204) and tensors["conv2d_5/kernel"].shape == (7, 561, 1, 64)
    assert tensors["dense_1/kernel"].shape == (200, 50) and tensors["batch_normalization_9/gamma"].shape == (1506,)
    # The data file is exactly the sum of the tensors (optimiser slots included): nothing read twice or skipped.
    assert sum(e["size"] for e in entries.values()) == Path(str(msd_checkpoint) + ".data-00000-of-00001").stat().st_size
    assert all(np.isfinite(t).all() for t in tensors.values())


def test_reader_refuses_a_truncated_checkpoint(msd_checkpoint, tmp_path):
    data = Path(str(msd_checkpoint) + ".data-00000-of-00001").read_bytes()
    shutil.copy(str(msd_checkpoint) + ".index", tmp_path / "cut.index")
    (tmp_path / "cut.data-00000-of-00001").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_checkpoint(tmp_path / "cut")
    index = Path(str(msd_checkpoint) + ".index").read_bytes()
    (tmp_path / "cut.index").write_bytes(index[: len(index) - 10])
    with pytest.raises(CheckpointFormatError, match="not a TensorFlow checkpoint index"):
        read_checkpoint(tmp_path / "cut")


def test_wrong_or_truncated_wheel_is_a_clear_error_naming_its_sha256(wheel, tmp_path):
    (tmp_path / WHEEL).write_bytes(wheel.read_bytes()[:1000])
    with pytest.raises(WheelError, match=WHEEL_SHA256):
        check_wheel(tmp_path / WHEEL)
    with pytest.raises(WheelError, match="no musicnn wheel"):
        convert_wheel(tmp_path / "absent.whl")


def test_conversion_writes_weights_the_port_loads(wheel, tmp_path, monkeypatch):
    monkeypatch.setenv("GENREFUSION_WEIGHTS", str(tmp_path))
    written = convert_wheel(wheel, models=("MTT_musicnn",))
    assert written == [tmp_path / "musicnn" / "MTT_musicnn.pt"]
    converted = load_musicnn("MTT_musicnn")
    packaged = load_musicnn("MTT_musicnn", written[0])
    for a, b in zip(converted.state_dict().values(), packaged.state_dict().values()):
        assert torch.equal(a, b)
    assert convert_wheel(wheel, models=("MTT_musicnn",)) == []  # converted once


@pytest.mark.parametrize("model", sorted(MODELS))
def test_port_equals_the_original_package(model, data_root, shared_cache):
    """Tag probabilities and embeddings through the project's own audio path against musicnn 0.1.0 with
    TensorFlow (tests/reference/make_musicnn_reference.py made the table)."""
    from audio.extract import extract_musicnn

    reference = pd.read_csv(REFERENCE)
    reference = reference[reference["model"] == model]
    clips = list(reference["clip"].unique())
    items = pd.DataFrame({"item_id": clips, "audio_path": [str(data_root / c) for c in clips]})
    kept, tags = extract_musicnn(items, (model,), "tags", cache_dir=shared_cache, progress=False)
    assert len(kept.items) == len(clips)
    for clip, ours in zip(clips, tags):
        expected = reference[(reference["clip"] == clip) & (reference["output"] == "tag")].sort_values("index")
        np.testing.assert_allclose(ours, expected["value"], atol=1e-4, err_msg=clip)
    from audio.io import read_audio
    from audio.musicnn import SAMPLE_RATE, MusicnnFrontEnd, patches

    y = read_audio(data_root / clips[0], sr=SAMPLE_RATE).y
    with torch.no_grad():
        _, embedding = load_musicnn(model)(patches(MusicnnFrontEnd()(torch.from_numpy(y)[None])[0])[:1])
    expected = reference[(reference["clip"] == clips[0]) & (reference["output"] == "penultimate_first_patch")]
    np.testing.assert_allclose(embedding[0].numpy(), expected.sort_values("index")["value"], atol=1e-4)


@pytest.mark.slow
def test_zero_shot_genres_are_far_above_chance_on_gtzan(data_root, shared_cache):
    """Six clips each of classical, jazz and rock, classified by musicnn's tags alone (chance: 1/3)."""
    from audio.predict import AudioModel, predict_audio, input_spec

    labels = ["classical", "jazz", "rock"]
    paths = [p for genre in labels for p in sorted((data_root / "gtzan" / "audio" / genre).glob("*.ogg"))[20:26]]
    clips = pd.DataFrame({"item_id": [p.stem for p in paths], "audio_path": [str(p) for p in paths]})
    musicnn = ["MSD_musicnn", "MTT_musicnn"]
    model = AudioModel(TagGenres(musicnn, labels).eval(), labels, input_spec(("musicnn_tags",), None, None, musicnn))
    scored, proba, problems = predict_audio(model, clips, shared_cache, n_jobs=2)
    assert len(problems) == 0 and np.allclose(proba.sum(1), 1)
    truth = scored["item_id"].str.split(".").str[0].map(labels.index).to_numpy()
    assert (proba.argmax(1) == truth).mean() >= 0.7


def test_a_label_no_tag_maps_to_is_a_clear_error():
    with pytest.raises(ValueError, match=r"maps to \['reggae'\]"):
        TagGenres(["MSD_musicnn"], ["rock", "reggae"])
