"""Feature extraction speed: per-feature librosa calls vs. the one-STFT extractor, 1 and N processes.

Usage: .venv/bin/python benchmarks/feature_speed.py [n_clips] [n_jobs]
Writes benchmarks/results/feature_speed.json with the machine it ran on.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from audio.extract import extract_features
from audio.features import gtzan_features, reference_features
from audio.io import load_audio
from data.gtzan import load_gtzan_audio
from data.root import resolve_data_root
from engine.io import write_json
from engine.run import machine_info


def main(n_clips: int = 20, n_jobs: int = 2) -> dict:
    items = load_gtzan_audio(resolve_data_root() / "gtzan" / "audio").items
    items = items[items["audio_path"].str.endswith(".ogg")].groupby("label").head(2).head(n_clips)
    clips = [load_audio(p).y for p in items["audio_path"]]
    gtzan_features(clips[0])  # compile the numba kernel outside the timing

    def seconds_per_clip(function) -> float:
        start = time.perf_counter()
        for y in clips:
            function(y)
        return (time.perf_counter() - start) / len(clips)

    reference = seconds_per_clip(reference_features)
    fast = seconds_per_clip(gtzan_features)
    start = time.perf_counter()
    extract_features(items, cache_dir=None, n_jobs=n_jobs, progress=False)
    parallel = (time.perf_counter() - start) / len(items)  # includes decoding and process start-up
    result = {
        "clips": len(clips), "clip_seconds": 30, "n_jobs": n_jobs,
        "reference_s_per_clip": round(reference, 4), "one_stft_s_per_clip": round(fast, 4),
        "one_stft_parallel_s_per_clip_incl_decode": round(parallel, 4),
        "speedup_one_process": round(reference / fast, 2),
        "speedup_parallel": round(reference / parallel, 2),
        "command": f"python benchmarks/feature_speed.py {n_clips} {n_jobs}",
        "machine": machine_info(),
    }
    out = Path(__file__).parent / "results" / "feature_speed.json"
    write_json(out, result)
    print({k: v for k, v in result.items() if k != "machine"})
    return result


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
