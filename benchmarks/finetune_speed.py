"""Cover fine-tuning throughput: images/s and the share of time spent waiting for data, for
EfficientNet-Lite0, Lite2 and ResNet50 (random init: throughput does not depend on the weights)
at 224 px, through the one trainer (``engine.trainer.fit``) and the covers' dataset, on real
covers decoded and resized once (the uint8 cache the covers branch uses).

On a GPU each backbone also runs with bf16 autocast and channels-last, and once more compiled.
The first epoch pays for start-up (and compilation), so each run trains two epochs and the second
one is reported.

Usage: .venv/bin/python benchmarks/finetune_speed.py [n_images] [batch_size]
Writes benchmarks/results/finetune_speed_cpu.json (finetune_speed_cuda.json on a GPU machine) with the machine
it ran on, after every run (``complete`` false until the last).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covers.backbones import create_model
from covers.inputs import decode_covers
from covers.predict import CoverImages
from data.covers import load_covers_table
from data.root import resolve_data_root
from engine.io import write_json
from engine.run import machine_info
from engine.trainer import TrainerConfig, fit

BACKBONES = ("resnet50", "efficientnet_lite0", "efficientnet_lite2")
SIZE = 224


def _covers(n_images: int) -> np.ndarray:
    items = load_covers_table(resolve_data_root() / "covers" / "covers.csv").items.head(min(n_images, 256))
    _, images = decode_covers(items, SIZE, progress=False)
    repeats = -(-n_images // len(images))  # a GPU epoch wants more images than are worth decoding here
    return np.concatenate([images] * repeats)[:n_images]


def _throughput(backbone: str, images: np.ndarray, config: TrainerConfig) -> dict:
    torch.manual_seed(0)
    network = create_model(backbone, 3, pretrained=False)
    labels = np.arange(len(images)) % 3
    train = CoverImages(images, labels)
    val = CoverImages(images[: config.batch_size], labels[: config.batch_size])
    with tempfile.TemporaryDirectory() as run_dir:
        fit(network, train, val, config, Path(run_dir), {"labels": ["a", "b", "c"]})
        last = pd.read_csv(Path(run_dir) / "history.csv").iloc[-1]
    return {"images_per_s": round(float(last["train_items_per_s"]), 2),
            "data_wait_share": round(float(last["train_data_wait_share"]), 4)}


def main(n_images: int = 64, batch_size: int = 16) -> dict:
    images = _covers(n_images)
    cuda = torch.cuda.is_available()
    base = dict(max_epochs=2, patience=2, batch_size=batch_size, progress=False, scheduler="none",
                num_workers=4 if cuda else 0, device="cuda" if cuda else "cpu")
    variants = {"fp32": TrainerConfig(**base, amp=False)}
    if cuda:
        variants |= {"bf16_channels_last": TrainerConfig(**base, amp=True, channels_last=True),
                     "bf16_channels_last_compiled": TrainerConfig(**base, amp=True, channels_last=True, compile=True)}
    runs: dict[str, dict] = {}
    result = {"images": n_images, "size": SIZE, "batch_size": batch_size, "device": "cuda" if cuda else "cpu",
              "cpu_threads": torch.get_num_threads(), "epoch_reported": 2, "runs": runs,
              "command": f"python benchmarks/finetune_speed.py {n_images} {batch_size}", "machine": machine_info()}
    out = Path(__file__).parent / "results" / f"finetune_speed_{'cuda' if cuda else 'cpu'}.json"
    for backbone in BACKBONES:
        for name, config in variants.items():
            runs.setdefault(backbone, {})[name] = _throughput(backbone, images, config)
            # Written after every run: a run cut short (a time limit on a lent machine) keeps what it measured.
            write_json(out, {**result, "complete": False})
            print(backbone, name, runs[backbone][name], flush=True)
    write_json(out, {**result, "complete": True})
    return result


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
