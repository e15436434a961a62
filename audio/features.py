"""GTZAN-style hand-crafted features: the 57 columns of ``features_30_sec.csv`` from a waveform.

One STFT per clip feeds every spectral feature (chroma, centroid, bandwidth, rolloff, the mel
spectrogram behind the MFCCs and the onset envelope behind the tempo, and the HPSS split);
only RMS and zero crossings, which are defined on time-domain frames, read the waveform.
Frames are padded by reflection, as librosa did before 0.10 when the GTZAN table was made.
"""
from __future__ import annotations

import librosa
import numba
import numpy as np

from data.gtzan import FEATURE_COLUMNS

N_FFT = 2048
HOP_LENGTH = 512
PAD_MODE = "reflect"


HPSS_KERNEL = 31


# No NaN (documented) and no signed zeros (a median of -0.0 and 0.0 is either): with these the
# compiler vectorises the inner loop's comparisons and min/max, ~1.7x; infinities stay exact.
@numba.njit(cache=True, nogil=True, fastmath={"nnan", "nsz"})
def _running_median_columns(padded: np.ndarray, width: int, out: np.ndarray) -> None:
    # Each output column's medians follow from the previous column's: sliding by one removes one
    # sample and adds one, so a column's median is the previous value, the next distinct value below
    # it or the next above, whichever has the middle rank. One pass over the window counts the samples
    # below and above the previous median and finds its neighbours; the inner loop runs along the
    # contiguous axis (every filtered row at once), which the compiler vectorises. The counts are kept
    # in the samples' float type (exact below 2**24), so that every lane of the loop has one width.
    # The running neighbours are written to a second buffer and the two swapped after each sample:
    # updated in place, ``x[r] = max(x[r], v)`` compiles to a masked store, microcoded and ~3x slower
    # over the whole kernel on AMD Zen 3 (benchmarks/results/median_kernel.json).
    n_steps, n_rows = out.shape
    half = width // 2
    median = np.empty(n_rows, dtype=padded.dtype)
    for r in range(n_rows):
        median[r] = np.sort(padded[:width, r])[half]
    out[0] = median
    below_count = np.empty(n_rows, dtype=padded.dtype)
    above_count = np.empty(n_rows, dtype=padded.dtype)
    below, next_below = np.empty(n_rows, dtype=padded.dtype), np.empty(n_rows, dtype=padded.dtype)
    above, next_above = np.empty(n_rows, dtype=padded.dtype), np.empty(n_rows, dtype=padded.dtype)
    lowest, highest = padded.dtype.type(-np.inf), padded.dtype.type(np.inf)
    one, zero = padded.dtype.type(1), padded.dtype.type(0)
    for step in range(1, n_steps):
        below_count[:] = zero
        above_count[:] = zero
        below[:] = lowest
        above[:] = highest
        for k in range(step, step + width):
            sample = padded[k]
            for r in range(n_rows):
                v = sample[r]
                m = median[r]
                below_count[r] += one if v < m else zero
                above_count[r] += one if v > m else zero
                next_below[r] = max(below[r], v if v < m else lowest)
                next_above[r] = min(above[r], v if v > m else highest)
            below, next_below = next_below, below
            above, next_above = next_above, above
        for r in range(n_rows):
            if below_count[r] > half:
                median[r] = below[r]
            elif above_count[r] > half:
                median[r] = above[r]
        out[step] = median


def running_median(S: np.ndarray, width: int, axis: int) -> np.ndarray:
    """Median over ``width`` (odd) neighbours along ``axis`` of 2-D ``S``, edges mirrored.

    Equal to ``scipy.ndimage.median_filter(S, size=…, mode="reflect")`` with a 1-D window (the
    same values, not an approximation), 14–22× faster on a 30-second spectrogram. ``S`` must
    hold no NaN.
    """
    if width % 2 != 1 or S.ndim != 2:
        raise ValueError("running_median needs a 2-D array and an odd width")
    moved = np.moveaxis(S, axis, 0)
    half = width // 2
    padded = np.ascontiguousarray(np.pad(moved, [(half, half), (0, 0)], mode="symmetric"))
    out = np.empty(moved.shape, dtype=S.dtype)
    _running_median_columns(padded, width, out)
    return np.moveaxis(out, 0, axis)


def hpss(stft: np.ndarray, kernel_size: int = HPSS_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic/percussive split of a complex STFT ``(freq, frames)`` (Fitzgerald's median filtering
    with soft masks, as ``librosa.decompose.hpss`` with its defaults)."""
    magnitude = np.abs(stft)
    harmonic = running_median(magnitude, kernel_size, axis=-1)
    percussive = running_median(magnitude, kernel_size, axis=-2)
    mask_harmonic = librosa.util.softmask(harmonic, percussive, power=2.0, split_zeros=False)
    mask_percussive = librosa.util.softmask(percussive, harmonic, power=2.0, split_zeros=False)
    return stft * mask_harmonic, stft * mask_percussive


def _waveform(stft: np.ndarray, hop_length: int, n_samples: int) -> np.ndarray:
    # librosa < 0.10 (which made the GTZAN table) inverted without `length=`, which drops the
    # last n_samples % hop_length samples, then zero-padded back to the clip's length; the
    # HPSS means are tiny, so that tail decides whether they agree with the table.
    return librosa.util.fix_length(librosa.istft(stft, hop_length=hop_length), size=n_samples)


def _mean_var(name: str, values: np.ndarray) -> dict[str, float]:
    return {f"{name}_mean": float(np.mean(values)), f"{name}_var": float(np.var(values))}


def gtzan_features(y: np.ndarray, sr: int = 22050, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> dict[str, float]:
    """The 57 GTZAN features of mono waveform ``y`` (float32, ``sr`` Hz), keyed by column name.

    Each frame-wise feature contributes its mean and variance over frames; ``harmony`` and
    ``perceptr`` are the mean/variance of the HPSS harmonic and percussive waveforms; ``tempo``
    (BPM) is estimated from the median-aggregated mel onset envelope, as ``beat_track`` does.
    """
    y = np.asarray(y, dtype=np.float32)
    stft = librosa.stft(y, n_fft=n_fft, hop_length=hop_length, pad_mode=PAD_MODE)
    magnitude = np.abs(stft)
    power = magnitude**2

    out: dict[str, float] = {}
    out |= _mean_var("chroma_stft", librosa.feature.chroma_stft(S=power, sr=sr, n_fft=n_fft))
    out |= _mean_var("rms", librosa.feature.rms(y=y, frame_length=n_fft, hop_length=hop_length, pad_mode=PAD_MODE))
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    centroid = librosa.feature.spectral_centroid(S=magnitude, freq=freqs)
    out |= _mean_var("spectral_centroid", centroid)
    out |= _mean_var("spectral_bandwidth", librosa.feature.spectral_bandwidth(S=magnitude, freq=freqs, centroid=centroid))
    out |= _mean_var("rolloff", librosa.feature.spectral_rolloff(S=magnitude, freq=freqs))
    out |= _mean_var("zero_crossing_rate", librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop_length))

    harmonic, percussive = hpss(stft)
    out |= _mean_var("harmony", _waveform(harmonic, hop_length, len(y)))
    out |= _mean_var("perceptr", _waveform(percussive, hop_length, len(y)))

    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr, n_fft=n_fft))
    onset = librosa.onset.onset_strength(S=mel_db, sr=sr, hop_length=hop_length, aggregate=np.median)
    out["tempo"] = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset, sr=sr, hop_length=hop_length))[0])
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=20)
    for i in range(20):
        out |= _mean_var(f"mfcc{i + 1}", mfcc[i])
    return {column: out[column] for column in FEATURE_COLUMNS}


def reference_features(y: np.ndarray, sr: int = 22050) -> dict[str, float]:
    """The straightforward version: one librosa call per feature, each computing its own STFT.

    The benchmark's baseline (``benchmarks/feature_speed.py``); its HPSS waveforms keep the
    last partial hop, so its two HPSS means differ slightly from the table.
    """
    out: dict[str, float] = {}
    out |= _mean_var("chroma_stft", librosa.feature.chroma_stft(y=y, sr=sr, pad_mode=PAD_MODE))
    out |= _mean_var("rms", librosa.feature.rms(y=y, pad_mode=PAD_MODE))
    out |= _mean_var("spectral_centroid", librosa.feature.spectral_centroid(y=y, sr=sr, pad_mode=PAD_MODE))
    out |= _mean_var("spectral_bandwidth", librosa.feature.spectral_bandwidth(y=y, sr=sr, pad_mode=PAD_MODE))
    out |= _mean_var("rolloff", librosa.feature.spectral_rolloff(y=y, sr=sr, pad_mode=PAD_MODE))
    out |= _mean_var("zero_crossing_rate", librosa.feature.zero_crossing_rate(y))
    harmonic, percussive = librosa.effects.hpss(y, pad_mode=PAD_MODE)
    out |= _mean_var("harmony", harmonic)
    out |= _mean_var("perceptr", percussive)
    out["tempo"] = float(np.atleast_1d(librosa.beat.beat_track(y=y, sr=sr)[0])[0])
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, pad_mode=PAD_MODE)
    for i in range(20):
        out |= _mean_var(f"mfcc{i + 1}", mfcc[i])
    return {column: out[column] for column in FEATURE_COLUMNS}
