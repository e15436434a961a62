"""The HPSS median filters' kernel on this machine's CPU: ms per 30-s clip, both directions.

Usage: .venv/bin/python benchmarks/median_kernel.py [n_clips] [rounds]
On the magnitude spectrograms of ``n_clips`` real GTZAN clips (default 8), times per clip and median
over ``rounds`` rounds (default 5; this VM's speed drifts within minutes) ``audio.features.running_median``,
and ``scipy.ndimage.median_filter`` once, the two checked equal. One thread. The kernel's speed depends
on the CPU's vector units (its comment says why): compare a machine's figure with another's by the
extensions recorded beside it.
Writes benchmarks/results/median_kernel.json with the machine and its CPU's vector extensions.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import librosa
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


def _scipy_median(S: np.ndarray, width: int, axis: int) -> np.ndarray:
    return median_filter(S, size=(1, width) if axis == -1 else (width, 1), mode="reflect")


def _vector_flags() -> list[str]:
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split() \
        if Path("/proc/cpuinfo").is_file() else []
    return sorted(flag for flag in flags if flag.startswith(("avx", "fma", "sse4")))


def main(n_clips: int = 8, rounds: int = 5) -> dict:
    paths = load_gtzan_audio(resolve_data_root() / "gtzan" / "audio").items["audio_path"] \
        .sample(n_clips, random_state=0).tolist()
    magnitudes = [np.abs(librosa.stft(read_audio(path).y, n_fft=N_FFT, hop_length=HOP_LENGTH, pad_mode=PAD_MODE))
                  for path in paths]
    running_median(magnitudes[0][:, :100], HPSS_KERNEL, -1)  # compiled outside the timing
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        for S in magnitudes:
            for axis in AXES:
                running_median(S, HPSS_KERNEL, axis)
        timings.append((time.perf_counter() - start) / n_clips * 1000)
    start = time.perf_counter()
    scipy_results = [[_scipy_median(S, HPSS_KERNEL, axis) for axis in AXES] for S in magnitudes]
    scipy_ms = (time.perf_counter() - start) / n_clips * 1000
    equal = all(np.array_equal(running_median(S, HPSS_KERNEL, axis), expected)
                for S, per_axis in zip(magnitudes, scipy_results) for axis, expected in zip(AXES, per_axis))
    return {"clips": n_clips, "rounds": rounds, "spectrogram_shape": list(magnitudes[0].shape), "width": HPSS_KERNEL,
            "threads": 1, "ms_per_clip_both_directions": {"running_median": round(float(np.median(timings)), 1),
                                                          "scipy.ndimage.median_filter": round(scipy_ms, 1)},
            "equal_to_scipy": {"running_median": equal}, "cpu_vector_extensions": _vector_flags(),
            "command": f"python benchmarks/median_kernel.py {n_clips} {rounds}", "machine": machine_info()}


if __name__ == "__main__":
    result = main(*(int(arg) for arg in sys.argv[1:3]))
    path = Path(__file__).parent / "results" / "median_kernel.json"
    write_json(path, result)
    print(path.read_text())
