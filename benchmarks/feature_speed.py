"""GTZAN feature speed, side by side in one run: per-feature librosa calls (naive), the one-STFT
librosa extractor (the reference), the torch extractor on one CPU core, the extractor pipeline
with N worker processes (decoding included), and the torch extractor on CUDA in batches
(decoding on the CPU included) when a GPU is present. Every path's values are checked against
the reference's in the same run.

Usage: .venv/bin/python benchmarks/feature_speed.py [n_clips] [n_jobs]
Writes benchmarks/results/feature_speed.json (feature_speed_cuda.json on a GPU machine) with the machine it ran on.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from audio.extract import compile_feature_kernels, extract_features, start_workers
from audio.features import gtzan_features, reference_features
from audio.features_torch import GtzanFeatures
from audio.io import load_audio
from data.gtzan import FEATURE_COLUMNS, load_gtzan_audio
from data.root import resolve_data_root
from engine.io import write_json
from engine.run import machine_info


def _worst_difference(rows: list[dict[str, float]] | np.ndarray, reference: list[dict[str, float]]) -> dict:
    """Largest relative difference over the non-tempo columns, and how many tempos differ."""
    ours = np.array([[row[c] for c in FEATURE_COLUMNS] for row in rows]) if isinstance(rows, list) else rows
    theirs = np.array([[row[c] for c in FEATURE_COLUMNS] for row in reference])
    tempo = FEATURE_COLUMNS.index("tempo")
    relative = np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-12)
    relative[:, tempo] = 0
    return {"max_relative_difference": float(relative.max()),
            "tempos_differing": int((ours[:, tempo] != theirs[:, tempo]).sum())}


def main(n_clips: int = 20, n_jobs: int = 2) -> dict:
    items = load_gtzan_audio(resolve_data_root() / "gtzan" / "audio").items
    items = items[items["audio_path"].str.endswith(".ogg")].groupby("label").head(2).head(n_clips)
    clips = [load_audio(p).y for p in items["audio_path"]]
    compile_feature_kernels()  # numba kernels compiled outside the timing

    def per_clip(function) -> tuple[float, list]:
        start = time.perf_counter()
        out = [function(y) for y in clips]
        return (time.perf_counter() - start) / len(clips), out

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core each, as in a worker process
    naive, naive_rows = per_clip(reference_features)
    one_stft, reference = per_clip(gtzan_features)
    module = GtzanFeatures()
    torch_cpu, torch_rows = per_clip(lambda y: module(torch.from_numpy(y))[0].numpy())
    torch.set_num_threads(threads)
    start_workers(n_jobs)  # as a long job does, once
    start = time.perf_counter()
    pipeline = extract_features(items, cache_dir=None, n_jobs=n_jobs, progress=False).items
    parallel = (time.perf_counter() - start) / len(items)  # decoding included, worker start-up not
    result = {
        "clips": len(clips), "clip_seconds": 30, "n_jobs": n_jobs,
        "seconds_per_clip": {
            "naive_librosa_1_core": round(naive, 4), "one_stft_librosa_1_core": round(one_stft, 4),
            "torch_cpu_1_core": round(torch_cpu, 4),
            f"torch_cpu_pipeline_{n_jobs}_processes_incl_decode": round(parallel, 4),
        },
        "speedup_vs_naive": {
            "one_stft_librosa_1_core": round(naive / one_stft, 2), "torch_cpu_1_core": round(naive / torch_cpu, 2),
            f"torch_cpu_pipeline_{n_jobs}_processes_incl_decode": round(naive / parallel, 2),
        },
        "agreement_with_one_stft_reference": {
            "naive_librosa": _worst_difference(naive_rows, reference),
            "torch_cpu": _worst_difference(np.stack(torch_rows), reference),
            "torch_cpu_pipeline": _worst_difference(pipeline[FEATURE_COLUMNS].to_numpy(), reference),
        },
    }
    if torch.cuda.is_available():
        result |= _cuda(items["audio_path"].tolist(), naive)
    result |= {"command": f"python benchmarks/feature_speed.py {n_clips} {n_jobs}", "machine": machine_info()}
    # A GPU machine's run is its own record: the 2-core figures stay in feature_speed.json.
    out = Path(__file__).parent / "results" / f"feature_speed{'_cuda' if torch.cuda.is_available() else ''}.json"
    write_json(out, result)
    print({k: v for k, v in result.items() if k != "machine"})
    return result


def _cuda(paths: list[str], naive: float) -> dict:
    """Decode the clips on the CPU cores (threads: decoding and resampling release the GIL), then
    the features of all of them in one batch on the GPU."""
    module = GtzanFeatures().cuda()
    module(torch.zeros(2, 30 * 22050, device="cuda"))  # CUDA context, cuFFT plans
    torch.cuda.synchronize()
    start = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        decoded = [clip.y for clip in pool.map(load_audio, paths)]
    n = min(len(y) for y in decoded)  # a batch needs one length: 30-s clips differ by a few samples
    batch = torch.from_numpy(np.stack([y[:n] for y in decoded])).pin_memory().cuda(non_blocking=True)
    decode = time.perf_counter() - start
    values = module(batch).cpu().numpy()
    total = (time.perf_counter() - start) / len(paths)
    cropped = [gtzan_features(y[:n]) for y in decoded]  # the reference on the same cropped clips
    return {"cuda": {"device": torch.cuda.get_device_name(), "batch": len(paths),
                     "seconds_per_clip_incl_decode": round(total, 5),
                     "decode_seconds_per_clip": round(decode / len(paths), 5),
                     "speedup_vs_naive_incl_decode": round(naive / total, 1),
                     "agreement_with_one_stft_reference": _worst_difference(values, cropped)}}


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
