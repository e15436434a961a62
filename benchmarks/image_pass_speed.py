"""The cover network's cost per cover on this machine's CPU by the number of covers in one forward pass.

Usage: .venv/bin/python benchmarks/image_pass_speed.py [n_covers] [rounds]
Decodes ``n_covers`` real covers (default 64) at each backbone's input size, builds the cover network as
training does (``covers.backbones.create_model``: ImageNet weights, the paper's head, eval mode, channels
last, float32), and times forward passes of 1 … ``n_covers`` covers over the same covers, sizes interleaved
for ``rounds`` rounds (the median is reported: this VM's speed drifts within minutes), with every core's
torch threads and with one thread (a scoring process beside feature workers). Also times the path
scoring runs (``engine.inference.predict_proba(images=True)``), and compares each pass size's
probabilities with one pass of all covers. Writes benchmarks/results/image_pass_speed.json with the machine.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covers.backbones import create_model
from covers.images import load_cover
from covers.predict import CoverImages
from data.root import resolve_data_root
from engine.inference import CPU_IMAGE_BATCH, predict_proba
from engine.io import write_json
from engine.run import machine_info

BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")
PASS_SIZES = (1, 2, 4, 8, 16, 64)


def _covers(n_covers: int, size: int) -> np.ndarray:
    root = resolve_data_root()
    table = pd.read_csv(root / "covers" / "covers.csv")
    spread = table["path"].iloc[::max(1, len(table) // n_covers)].head(n_covers)  # every source and genre
    return np.stack([load_cover(root / path, size) for path in spread])


def _ms_per_cover(network: torch.nn.Module, pixels: torch.Tensor, pass_size: int) -> float:
    start = time.perf_counter()
    for part in pixels.split(pass_size):
        network(part)
    return (time.perf_counter() - start) / len(pixels) * 1000


@torch.no_grad()
def _backbone(name: str, n_covers: int, rounds: int, threads: tuple[int, ...]) -> dict:
    network = create_model(name, n_classes=3, pretrained=True).eval().to(memory_format=torch.channels_last)
    images = _covers(n_covers, network.info.input_size)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    sizes = [size for size in PASS_SIZES if size <= n_covers]
    whole = torch.softmax(network(pixels), dim=1)
    agreement = {size: float((torch.cat([torch.softmax(network(part), dim=1) for part in pixels.split(size)])
                              - whole).abs().max()) for size in sizes}
    by_threads = {}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        timings: dict[int, list[float]] = {size: [] for size in sizes}
        shipped = []
        for _ in range(rounds):
            for size in sizes:
                network(pixels[:size])  # this pass size's kernels chosen outside the timing
                timings[size].append(_ms_per_cover(network, pixels, size))
            start = time.perf_counter()
            predict_proba(network, CoverImages(images, np.zeros(len(images), dtype=np.int64)), batch_size=64,
                          device="cpu", images=True)
            shipped.append((time.perf_counter() - start) / len(images) * 1000)
        by_threads[str(n_threads)] = {
            "ms_per_cover_by_pass_size": {str(size): round(float(np.median(v)), 2) for size, v in timings.items()},
            "predict_proba_ms_per_cover": round(float(np.median(shipped)), 2)}
    return {"input_size": network.info.input_size, "threads": by_threads,
            "max_probability_difference_from_one_pass": {str(size): diff for size, diff in agreement.items()}}


def main(n_covers: int = 64, rounds: int = 3) -> dict:
    threads = tuple(sorted({os.cpu_count() or 1, 1}, reverse=True))
    result = {"covers": n_covers, "rounds": rounds, "pass_sizes": [s for s in PASS_SIZES if s <= n_covers],
              "cpu_image_batch": CPU_IMAGE_BATCH, "precision": "fp32", "memory_format": "channels_last",
              "backbones": {}, "command": f"python benchmarks/image_pass_speed.py {n_covers} {rounds}"}
    out = Path(__file__).parent / "results" / "image_pass_speed.json"
    for name in BACKBONES:
        result["backbones"][name] = _backbone(name, n_covers, rounds, threads)
        result["complete"] = name == BACKBONES[-1]
        write_json(out, result | {"machine": machine_info()})  # after each backbone: a stopped run keeps what it had
        print(name, result["backbones"][name])
    return result


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
