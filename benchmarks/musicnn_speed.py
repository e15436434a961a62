"""musicnn's cost per 30-s clip on this machine: one network, both networks, and beside it the GTZAN features.

Usage: .venv/bin/python benchmarks/musicnn_speed.py [n_clips] [threads]
Times ``audio.musicnn.musicnn_outputs`` (what the musicnn models' feature job computes per clip:
log-mel front end, 3-second patches, forward pass; decoding at 16 kHz is outside the timing) and ``audio.features.gtzan_features`` on the same decoded GTZAN
clips, in one process with ``threads`` torch threads (default 1: one per core when features run in
parallel processes). Writes benchmarks/results/musicnn_speed.json with the machine it ran on.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from audio.features import gtzan_features
from audio.io import load_audio
from audio.musicnn import SAMPLE_RATE, musicnn_outputs
from data.gtzan import load_gtzan_audio
from data.root import resolve_data_root
from engine.io import write_json
from engine.run import machine_info


def main(n_clips: int = 10, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    items = load_gtzan_audio(resolve_data_root() / "gtzan" / "audio").items
    paths = items[items["audio_path"].str.endswith(".ogg")].groupby("label").head(2)["audio_path"].head(n_clips)
    clips = [load_audio(p).y for p in paths]
    resampled = [load_audio(p, sr=SAMPLE_RATE).y for p in paths]  # musicnn reads 16 kHz, as the extractor decodes it
    musicnn_outputs(resampled[0], ("MSD_musicnn", "MTT_musicnn"))  # load both networks outside the timing
    gtzan_features(clips[0])  # compile the numba kernel outside the timing

    def seconds_per_clip(function, inputs) -> float:
        start = time.perf_counter()
        for x in inputs:
            function(x)
        return (time.perf_counter() - start) / len(inputs)

    result = {
        "clips": len(clips), "clip_seconds": 30, "torch_threads": threads,
        "musicnn_one_network_s_per_clip": round(seconds_per_clip(lambda y: musicnn_outputs(y, ("MSD_musicnn",)),
                                                                 resampled), 4),
        "musicnn_two_networks_s_per_clip": round(seconds_per_clip(
            lambda y: musicnn_outputs(y, ("MSD_musicnn", "MTT_musicnn")), resampled), 4),
        "gtzan_features_s_per_clip": round(seconds_per_clip(gtzan_features, clips), 4),
        "command": f"python benchmarks/musicnn_speed.py {n_clips} {threads}",
        "machine": machine_info(),
    }
    result["musicnn_two_networks_clips_per_s"] = round(1 / result["musicnn_two_networks_s_per_clip"], 3)
    write_json(Path(__file__).parent / "results" / "musicnn_speed.json", result)
    print({k: v for k, v in result.items() if k != "machine"})
    return result


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
