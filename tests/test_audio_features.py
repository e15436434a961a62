import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audio.extract import extract_features
from audio.features import running_median
from audio.io import AudioError, load_audio
from data.gtzan import FEATURE_COLUMNS, GENRES


@pytest.fixture(scope="module")
def lossless_items(data_root):
    paths = [data_root / "gtzan" / "audio_lossless" / g / f"{g}.00000.flac" for g in GENRES]
    return pd.DataFrame({"item_id": [f"{g}.00000" for g in GENRES], "audio_path": [str(p) for p in paths]})


def test_features_agree_with_gtzan_table(lossless_items, data_root, tmp_path):
    table = pd.read_csv(data_root / "gtzan" / "features_30_sec.csv")
    table["item_id"] = table["filename"].str.replace(".wav", "", regex=False)
    table = table.set_index("item_id")
    extracted = extract_features(lossless_items, cache_dir=tmp_path, n_jobs=2, progress=False)
    assert len(extracted.problems) == 0
    failures = []
    for _, row in extracted.items.iterrows():
        expected = table.loc[row["item_id"]]
        for column in FEATURE_COLUMNS:
            if not _agrees(row[column], expected[column], column):
                failures.append((row["item_id"], column, row[column], expected[column]))
    assert failures == []


def test_cache_hit_returns_same_features(lossless_items, tmp_path):
    first = extract_features(lossless_items.iloc[:1], cache_dir=tmp_path, progress=False).items
    assert len(list(tmp_path.rglob("*.json"))) == 1
    second = extract_features(lossless_items.iloc[:1], cache_dir=tmp_path, progress=False).items
    pd.testing.assert_frame_equal(first, second)


def test_running_median_equals_scipy():
    from scipy.ndimage import median_filter

    x = np.random.default_rng(0).random((40, 70)).astype(np.float32) ** 3
    x[:, 10:20] = 0.0  # ties
    assert np.array_equal(running_median(x, 31, axis=-1), median_filter(x, size=(1, 31), mode="reflect"))
    assert np.array_equal(running_median(x, 7, axis=-2), median_filter(x, size=(7, 1), mode="reflect"))


def test_bad_audio_is_reported_per_item(tmp_path, data_root):
    sf.write(tmp_path / "silent.wav", np.zeros(22050, dtype=np.float32), 22050)
    sf.write(tmp_path / "short.wav", 0.1 * np.sin(np.arange(40000) / 5).astype(np.float32), 22050)
    (tmp_path / "text.ogg").write_text("not audio")
    items = pd.DataFrame({
        "item_id": ["corrupt", "silent", "missing", "text", "short", "past_end"],
        "audio_path": [str(data_root / "gtzan/audio/jazz/jazz.00054.wav"), str(tmp_path / "silent.wav"),
                       str(tmp_path / "nope.wav"), str(tmp_path / "text.ogg"), str(tmp_path / "short.wav"),
                       str(tmp_path / "short.wav")],
        "segment": [-1, -1, -1, -1, 0, 1],
    })
    result = extract_features(items, progress=False)
    reasons = dict(zip(result.problems["item_id"], result.problems["reason"]))
    assert reasons["corrupt"].startswith("unreadable audio") and reasons["silent"].startswith("silent audio")
    assert reasons["missing"].startswith("missing file") and reasons["text"].startswith("unreadable audio")
    assert result.items["item_id"].tolist() == ["short"]
    assert result.items["flag"].item() == "padded 26149 samples"
    assert "mostly past the end" in reasons["past_end"] or reasons["past_end"].startswith("empty audio")


def test_load_audio_resamples_to_mono_22050(tmp_path):
    stereo = np.stack([np.sin(np.arange(44100) / 10), np.zeros(44100)], axis=1).astype(np.float32)
    sf.write(tmp_path / "s.flac", stereo, 44100)
    clip = load_audio(tmp_path / "s.flac")
    assert clip.sr == 22050 and clip.source_sr == 44100 and clip.y.ndim == 1
    assert abs(len(clip.y) - 22050) <= 1
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "s.flac", offset=10**7)


def _agrees(ours: float, theirs: float, column: str) -> bool:
    if column == "tempo":
        return any(abs(ours - theirs * f) <= 0.01 * theirs * f for f in (1, 2, 0.5))
    return abs(ours - theirs) <= 0.01 * abs(theirs)


def test_three_second_segments_agree_with_gtzan_segment_table(data_root, tmp_path):
    """All 10 segments of the lossless classical clip (the segment table has classical/jazz/rock)."""
    table = pd.read_csv(data_root / "gtzan" / "features_3_sec.csv").set_index("filename")
    for genre in ("classical", "jazz", "rock"):
        path = str(data_root / "gtzan" / "audio_lossless" / genre / f"{genre}.00000.flac")
        items = pd.DataFrame({"item_id": [f"{genre}.00000.{k}" for k in range(10)], "audio_path": path,
                              "segment": range(10)})
        extracted = extract_features(items, cache_dir=tmp_path, n_jobs=2, progress=False).items
        failures = [(row["item_id"], c, row[c], table.loc[row["item_id"] + ".wav", c])
                    for _, row in extracted.iterrows() for c in FEATURE_COLUMNS
                    if not _agrees(row[c], table.loc[row["item_id"] + ".wav", c], c)]
        assert len(extracted) == 10 and failures == []


def test_worker_pool_is_kept_between_calls_and_a_dead_worker_costs_only_a_retry(lossless_items):
    import os
    import signal
    import time

    from audio import extract

    items = lossless_items.iloc[:2]
    _, first = extract.extract_log_mels(items, n_jobs=2, progress=False)
    pool = extract._worker_pool(2)
    workers = set(pool._processes)
    extract.extract_log_mels(items, n_jobs=2, progress=False)
    assert extract._worker_pool(2) is pool and set(pool._processes) == workers  # no new processes started

    os.kill(next(iter(workers)), signal.SIGKILL)
    # Wait until the executor has seen the death, so the next call meets a broken pool every time
    # (called at once, the surviving worker may do all the work before the death is noticed).
    deadline = time.monotonic() + 30
    while not pool._broken and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool._broken
    _, again = extract.extract_log_mels(items, n_jobs=2, progress=False)  # retried on fresh workers
    assert extract._worker_pool(2) is not pool
    np.testing.assert_array_equal(again, first)
