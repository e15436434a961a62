import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audio.extract import extract_features
from audio.features import running_median
from audio.io import AudioError, load_audio, mix_to_mono
from data.gtzan import FEATURE_COLUMNS

GTZAN_GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


@pytest.fixture(scope="module")
def lossless_items(data_root):
    paths = [data_root / "gtzan" / "audio_lossless" / g / f"{g}.00000.flac" for g in GTZAN_GENRES]
    return pd.DataFrame({"item_id": [f"{g}.00000" for g in GTZAN_GENRES], "audio_path": [str(p) for p in paths]})


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


def test_a_cache_hit_is_read_and_a_change_of_content_or_parameters_misses(lossless_items, tmp_path):
    """An entry tampered with on disk comes back as tampered (so the hit is read, not recomputed);
    other audio content, or other parameters, make new entries."""
    import json
    import shutil

    from audio.extract import extract_log_mels
    from audio.mel import MelParams

    one = lossless_items.iloc[:1]
    first = extract_features(one, cache_dir=tmp_path, progress=False).items
    [entry] = list(tmp_path.rglob("*.json"))
    record = json.loads(entry.read_text())
    record["value"]["rms_mean"] = 12345.0
    entry.write_text(json.dumps(record))
    again = extract_features(one, cache_dir=tmp_path, progress=False).items
    assert again["rms_mean"].item() == 12345.0 and first["rms_mean"].item() != 12345.0

    copy = tmp_path / "same_content.flac"
    shutil.copy(one["audio_path"].item(), copy)  # the same bytes elsewhere: the same entry
    same = extract_features(one.assign(audio_path=str(copy)), cache_dir=tmp_path, progress=False).items
    assert same["rms_mean"].item() == 12345.0 and len(list(tmp_path.rglob("*.json"))) == 1
    quieter = tmp_path / "quieter.wav"
    y = load_audio(one["audio_path"].item()).y
    sf.write(quieter, 0.5 * y, 22050)  # other content: a new entry, computed
    other = extract_features(one.assign(audio_path=str(quieter)), cache_dir=tmp_path, progress=False).items
    assert other["rms_mean"].item() == pytest.approx(first["rms_mean"].item() / 2, rel=0.02)
    assert len(list(tmp_path.rglob("*.json"))) == 2

    window = one.assign(segment=0)
    _, default = extract_log_mels(window, cache_dir=tmp_path, progress=False)
    _, fewer_bands = extract_log_mels(window, cache_dir=tmp_path, progress=False, mel=MelParams(n_mels=64))
    assert default.shape[1] == 128 and fewer_bands.shape[1] == 64  # other parameters: another entry
    assert len(list(tmp_path.rglob("*.npy"))) == 2
    entry = next(p for p in tmp_path.rglob("*.npy") if np.load(p).shape[0] == 128)
    np.save(entry, np.full_like(np.load(entry), -7.0))  # arrays too: a hit is read back
    _, tampered = extract_log_mels(window, cache_dir=tmp_path, progress=False)
    assert (tampered == -7.0).all()


def test_running_median_equals_scipy():
    from scipy.ndimage import median_filter

    x = np.random.default_rng(0).random((40, 70)).astype(np.float32) ** 3
    x[:, 10:20] = 0.0  # ties
    assert np.array_equal(running_median(x, 31, axis=-1), median_filter(x, size=(1, 31), mode="reflect"))
    assert np.array_equal(running_median(x, 7, axis=-2), median_filter(x, size=(7, 1), mode="reflect"))
    # Signed values and infinities, rows not a multiple of a vector's lanes: the kernel is not only for magnitudes.
    signed = np.random.default_rng(1).standard_normal((13, 45)).astype(np.float32)
    signed[3, 5:9], signed[7, 20:40] = np.inf, -np.inf
    for width, axis, size in ((31, -1, (1, 31)), (5, -2, (5, 1))):
        assert np.array_equal(running_median(signed, width, axis), median_filter(signed, size=size, mode="reflect"))


def test_bad_audio_is_reported_per_item(tmp_path, data_root):
    sf.write(tmp_path / "silent.wav", np.zeros(22050, dtype=np.float32), 22050)
    sf.write(tmp_path / "short.wav", 0.1 * np.sin(np.arange(40000) / 5).astype(np.float32), 22050)
    sf.write(tmp_path / "tiny.wav", 0.1 * np.sin(np.arange(500) / 5).astype(np.float32), 22050)
    (tmp_path / "text.ogg").write_text("not audio")
    items = pd.DataFrame({
        "item_id": ["corrupt", "silent", "missing", "text", "short", "past_end", "tiny"],
        "audio_path": [str(data_root / "gtzan/audio/jazz/jazz.00054.wav"), str(tmp_path / "silent.wav"),
                       str(tmp_path / "nope.wav"), str(tmp_path / "text.ogg"), str(tmp_path / "short.wav"),
                       str(tmp_path / "short.wav"), str(tmp_path / "tiny.wav")],
        "segment": [-1, -1, -1, -1, 0, 1, -1],
    })
    result = extract_features(items, progress=False)
    reasons = dict(zip(result.problems["item_id"], result.problems["reason"]))
    assert reasons["corrupt"].startswith("unreadable audio") and reasons["silent"].startswith("silent audio")
    assert reasons["missing"].startswith("missing file") and reasons["text"].startswith("unreadable audio")
    assert reasons["tiny"].startswith("too short for the GTZAN features: 500 samples")
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


def test_the_mixdown_is_the_channels_mean():
    rng = np.random.default_rng(0)
    for channels in (1, 2, 7):
        data = rng.standard_normal((5000, channels)).astype(np.float32)
        mono = mix_to_mono(data)
        assert mono.dtype == np.float32 and mono.shape == (5000,)
        assert np.array_equal(mono, data.mean(axis=1))
    wide = rng.standard_normal((5000, 9)).astype(np.float32)
    assert np.allclose(mix_to_mono(wide), wide.mean(axis=1), rtol=0, atol=1e-6)
    assert not np.shares_memory(mix_to_mono(wide[:, :1]), wide)


def _agrees(ours: float, theirs: float, column: str) -> bool:
    if column == "tempo":  # the same estimate: the table's tempo to its printed precision
        return abs(ours - theirs) <= 1e-4
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


def test_torch_features_equal_the_reference_extractor_clip_by_clip_and_in_a_batch(lossless_items, data_root):
    """The torch path against the librosa-based reference on real clips, one of them half silent
    (frames whose HPSS masks and normalisations take their all-zero branches), one whose tempo
    depends on the tempogram's window (8 s = 344 frames, not the tempogram's default 384); a batch
    gives each clip's row as computed alone."""
    import torch

    from audio.features import gtzan_features
    from audio.features_torch import GtzanFeatures

    paths = [*lossless_items["audio_path"].iloc[[0, 4, 7]], data_root / "gtzan/audio/metal/metal.00001.ogg"]
    clips = [load_audio(path).y for path in paths]
    n = min(len(y) for y in clips)
    clips = [y[:n] for y in clips]
    clips[2] = np.concatenate([clips[2][: n // 2], np.zeros(n - n // 2, np.float32)])
    module = GtzanFeatures()
    batch = module(torch.from_numpy(np.stack(clips))).numpy()
    for y, row in zip(clips, batch):
        alone = module(torch.from_numpy(y))[0].numpy()
        np.testing.assert_allclose(row, alone, rtol=1e-5, atol=1e-12)
        reference = gtzan_features(y)
        for column, value in zip(FEATURE_COLUMNS, row):
            if column == "tempo":
                assert value == reference[column]
            else:
                assert value == pytest.approx(reference[column], rel=1e-3, abs=1e-9), column


def test_unfolded_median_equals_the_running_median():
    """The GPU's median filter (every window unfolded) against the CPU's running window, on CPU tensors."""
    import torch

    from audio.features_torch import running_median, unfolded_median

    x = torch.from_numpy(np.random.default_rng(1).random((2, 60, 80)).astype(np.float32) ** 3)
    x[:, :, 10:25] = 0.0  # ties
    for dim in (-1, -2):
        assert torch.equal(unfolded_median(x, 31, dim), running_median(x, 31, dim))


def test_features_batched_on_a_device_equal_the_workers_and_are_cached(lossless_items, tmp_path):
    """The GPU scoring path run on the CPU: workers decode, the parent computes windows of one length
    in batches; the same values and failures as the workers' own features, and the same cache."""
    sf.write(tmp_path / "tiny.wav", 0.1 * np.sin(np.arange(600) / 5).astype(np.float32), 22050)
    items = pd.concat([lossless_items.iloc[:3].assign(segment=-1),
                       lossless_items.iloc[:2].assign(segment=4),
                       pd.DataFrame({"item_id": ["tiny"], "audio_path": [str(tmp_path / "tiny.wav")], "segment": [-1]})],
                      ignore_index=True)
    on_workers = extract_features(items, n_jobs=2, progress=False)
    batched = extract_features(items, cache_dir=tmp_path / "cache", n_jobs=2, progress=False, device="cpu")
    pd.testing.assert_frame_equal(batched.items, on_workers.items, rtol=1e-5)
    assert batched.problems["reason"].tolist() == on_workers.problems["reason"].tolist()
    assert batched.problems["item_id"].tolist() == ["tiny"]
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 5
    again = extract_features(items, cache_dir=tmp_path / "cache", progress=False, device="cpu")
    pd.testing.assert_frame_equal(again.items, batched.items)


def test_the_inverse_stft_equals_torchs():
    """The strided overlap-add inverse against torch.istft, on a real clip's spectrum and on a masked one
    (what HPSS inverts: no longer the spectrum of any signal)."""
    import torch

    from audio.features_torch import _squared_window_sum, inverse_stft, overlap_add

    y = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 22050)).astype(np.float32))
    window = torch.hann_window(2048)
    spectrum = torch.stft(y, 2048, 512, window=window, center=True, pad_mode="reflect", return_complex=True)
    mask = torch.rand(spectrum.shape, generator=torch.Generator().manual_seed(0))
    for s in (spectrum, spectrum * mask):
        expected = torch.istft(s, 2048, 512, window=window, center=True)
        ours = inverse_stft(s, 2048, 512, window)
        assert ours.shape == expected.shape
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="multiple"):
        overlap_add(torch.zeros(1, 4, 10), 3)
    with pytest.raises(ValueError, match="multiple"):
        inverse_stft(spectrum, 2048, 500, window)
    # The envelope without its frames laid out: the same additions as overlap-adding them.
    for n_frames in (1, 3, 44):
        assert torch.equal(_squared_window_sum(window, n_frames, 512),
                           overlap_add(window.pow(2).expand(1, n_frames, 2048), 512)[0])


def test_the_cpu_harmonic_spectrum_equals_the_tensor_mask_and_flags_energy_left_out():
    """The numba pass (CPU) against the tensor code the GPU runs, with silent bins (both medians 0):
    a clip whose silent bins carry energy is flagged incomplete, one whose silent bins are empty is not."""
    import torch

    from audio.features_torch import harmonic_spectrum, hpss_masks

    rng = np.random.default_rng(3)
    harmonic = torch.from_numpy(rng.random((2, 50, 60)).astype(np.float32) ** 3)
    percussive = torch.from_numpy(rng.random((2, 50, 60)).astype(np.float32) ** 3)
    harmonic[:, :5], percussive[:, :5] = 0.0, 0.0
    spectrum = torch.complex(torch.randn(2, 50, 60), torch.randn(2, 50, 60))
    spectrum[1, :5] = 0
    mask_harmonic, _ = hpss_masks(harmonic, percussive)
    ours, complete = harmonic_spectrum(spectrum, harmonic, percussive)
    torch.testing.assert_close(ours, spectrum * mask_harmonic, rtol=1e-6, atol=1e-7)
    assert (ours[:, :5] == 0).all()
    assert complete.tolist() == [False, True]


def test_the_percussive_waveform_as_the_clip_less_the_harmonic_equals_its_own_inversion(lossless_items):
    """The shortcut (one inverse STFT) against inverting the percussive spectrum, which the features
    fall back to for clips whose silent bins carry energy; on a real clip, float32 rounding apart."""
    import torch

    from audio.features import HPSS_KERNEL
    from audio.features_torch import GtzanFeatures, harmonic_spectrum, magnitude_and_power, running_median
    from audio.mel import stft

    module = GtzanFeatures()
    y = torch.from_numpy(load_audio(lossless_items["audio_path"].iloc[0]).y[:22050 * 5]).unsqueeze(0)
    spectrum = stft(y, module.n_fft, module.hop_length, module.mel.window, "reflect")
    magnitude, _ = magnitude_and_power(spectrum)
    along_time, along_freq = running_median(magnitude, HPSS_KERNEL, -1), running_median(magnitude, HPSS_KERNEL, -2)
    harmonic, complete = harmonic_spectrum(spectrum, along_time, along_freq)
    assert complete.all()
    harmony = module._waveform(harmonic, y.shape[-1])
    shortcut = module._percussive_waveform(y, harmony, spectrum, along_time, along_freq, complete)
    inverted = module._percussive_waveform(y, harmony, spectrum, along_time, along_freq, ~complete)
    torch.testing.assert_close(shortcut, inverted, rtol=0, atol=1e-6 * float(y.abs().max()))
    assert float((inverted - shortcut).abs().max()) > 0  # the fallback really inverted the spectrum


def test_magnitude_and_power_equal_torchs_complex_abs():
    import torch

    from audio.features_torch import magnitude_and_power

    spectrum = torch.complex(torch.randn(2, 30, 40), torch.randn(2, 30, 40)).transpose(-1, -2)
    magnitude, power = magnitude_and_power(spectrum)
    assert magnitude.shape == power.shape == spectrum.shape
    torch.testing.assert_close(magnitude, spectrum.abs(), rtol=1e-6, atol=0)
    torch.testing.assert_close(power, spectrum.abs() ** 2, rtol=1e-5, atol=0)
