"""The HPSS median filters' kernel on this machine's CPU: ms per 30-s clip, both directions.

Usage: .venv/bin/python benchmarks/median_kernel.py [n_clips] [rounds]
On the magnitude spectrograms of ``n_clips`` real GTZAN clips (default 8), times per clip and median
over ``rounds`` interleaved rounds (default 5; this VM's speed drifts within minutes):
``audio.features.running_median`` as shipped (the running neighbours written to a second buffer),
the same kernel updating them in place (``x[r] = max(x[r], v)``, which LLVM turns into masked
stores on AVX2), and ``scipy.ndimage.median_filter`` once, all three checked equal. One thread.
Writes benchmarks/results/median_kernel.json with the machine and its CPU's vector extensions.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import librosa
import numba
import numpy as np
from scipy.ndimage import median_filter

from audio.features import HOP_LENGTH, HPSS_KERNEL, N_FFT, PAD_MODE, running_median
from audio.io import read_audio
from data.gtzan import load_gtzan_audio
from data.root import resolve_data_root
from engine.io import write_json
from engine.run import machine_info

#: Window axis of each median: along time (the harmonic one), then along frequency (the percussive one).
AXES = (-1, -2)


@numba.njit(cache=True, nogil=True, fastmath={"nnan", "nsz"})
def _in_place_columns(padded: np.ndarray, width: int, out: np.ndarray) -> None:
    # audio.features._running_median_columns with the neighbours updated in place: the comparison.
    n_steps, n_rows = out.shape
    half = width // 2
    median = np.empty(n_rows, dtype=padded.dtype)
    for r in range(n_rows):
        median[r] = np.sort(padded[:width, r])[half]
    out[0] = median
    below_count = np.empty(n_rows, dtype=padded.dtype)
    above_count = np.empty(n_rows, dtype=padded.dtype)
    below = np.empty(n_rows, dtype=padded.dtype)
    above = np.empty(n_rows, dtype=padded.dtype)
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
                below[r] = max(below[r], v if v < m else lowest)
                above[r] = min(above[r], v if v > m else highest)
        for r in range(n_rows):
            if below_count[r] > half:
                median[r] = below[r]
            elif above_count[r] > half:
                median[r] = above[r]
        out[step] = median


def _in_place_median(S: np.ndarray, width: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(S, axis, 0)
    padded = np.ascontiguousarray(np.pad(moved, [(width // 2, width // 2), (0, 0)], mode="symmetric"))
    out = np.empty(moved.shape, dtype=S.dtype)
    _in_place_columns(padded, width, out)
    return np.moveaxis(out, 0, axis)


def _scipy_median(S: np.ndarray, width: int, axis: int) -> np.ndarray:
    return median_filter(S, size=(1, width) if axis == -1 else (width, 1), mode="reflect")


KERNELS = {"shipped (second buffer)": running_median, "in place": _in_place_median}


def _vector_flags() -> list[str]:
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split() \
        if Path("/proc/cpuinfo").is_file() else []
    return sorted(flag for flag in flags if flag.startswith(("avx", "fma", "sse4")))


def main(n_clips: int = 8, rounds: int = 5) -> dict:
    paths = load_gtzan_audio(resolve_data_root() / "gtzan" / "audio").items["audio_path"] \
        .sample(n_clips, random_state=0).tolist()
    magnitudes = [np.abs(librosa.stft(read_audio(path).y, n_fft=N_FFT, hop_length=HOP_LENGTH, pad_mode=PAD_MODE))
                  for path in paths]
    for kernel in KERNELS.values():  # compiled outside the timing
        kernel(magnitudes[0][:, :100], HPSS_KERNEL, -1)
    timings: dict[str, list[float]] = {name: [] for name in KERNELS}
    for _ in range(rounds):
        for name, kernel in KERNELS.items():
            start = time.perf_counter()
            for S in magnitudes:
                for axis in AXES:
                    kernel(S, HPSS_KERNEL, axis)
            timings[name].append((time.perf_counter() - start) / n_clips * 1000)
    start = time.perf_counter()
    scipy_results = [[_scipy_median(S, HPSS_KERNEL, axis) for axis in AXES] for S in magnitudes]
    scipy_ms = (time.perf_counter() - start) / n_clips * 1000
    equal = {name: all(np.array_equal(kernel(S, HPSS_KERNEL, axis), expected)
                       for S, per_axis in zip(magnitudes, scipy_results) for axis, expected in zip(AXES, per_axis))
             for name, kernel in KERNELS.items()}
    return {"clips": n_clips, "rounds": rounds, "spectrogram_shape": list(magnitudes[0].shape), "width": HPSS_KERNEL,
            "threads": 1, "ms_per_clip_both_directions": {
                **{name: round(float(np.median(values)), 1) for name, values in timings.items()},
                "scipy.ndimage.median_filter": round(scipy_ms, 1)},
            "equal_to_scipy": equal, "cpu_vector_extensions": _vector_flags(),
            "command": f"python benchmarks/median_kernel.py {n_clips} {rounds}", "machine": machine_info()}


if __name__ == "__main__":
    result = main(*(int(arg) for arg in sys.argv[1:3]))
    path = Path(__file__).parent / "results" / "median_kernel.json"
    write_json(path, result)
    print(path.read_text())
