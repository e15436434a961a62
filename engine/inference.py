"""What every predict path shares: the device, batched class probabilities, and checkpoint files.

Training imports this module, never the reverse: a predict path runs without the trainer.
Checkpoints hold only tensors and plain Python data, and are read with ``weights_only=True``,
so a model file can never run code.
"""
from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine.io import atomic_path
from engine.progress import progress_bar

BEST_CHECKPOINT = "checkpoint.pt"
RESUME_CHECKPOINT = "last.pt"


class CheckpointError(ValueError):
    """A model file that cannot be used: empty, truncated, not a torch file, or carrying code."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; an explicit CUDA device without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} but no CUDA device is available; use device=cpu or auto")
    return device


def to_device(inputs: Any, device: torch.device) -> Any:
    """A tensor, or a tuple/list of tensors (hybrid models), moved to ``device``."""
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(to_device(x, device) for x in inputs)
    return inputs.to(device, non_blocking=True)


#: Inference precision: ``auto`` (bf16 on CUDA, float32 on a CPU), ``bf16`` (on any device; on a CPU with AMX or
#: AVX-512-BF16 units faster than float32, probabilities within ~0.01) or ``fp32``.
PRECISIONS = ("auto", "bf16", "fp32")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def autocast(device: torch.device, enabled: bool = True, precision: str = "auto") -> torch.autocast:
    """bf16 autocast on CUDA (``precision=auto``), on any device (``bf16``) or nowhere (``fp32``); with ``auto``
    a no-op on CPU (CPU results stay float32, bit for bit)."""
    bf16 = {"auto": device.type == "cuda", "bf16": True, "fp32": False}[check_precision(precision)]
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and bf16)


#: Images an image network takes per forward pass on a CPU. In passes this small the steps that only move memory
#: (batch norm, ReLU6, padding copies) cost about half as much per image: the EfficientNet-Lite0 cover network at
#: 224 px on 2 Xeon cores took ~16 ms a cover in passes of 4 and ~35 ms in passes of 64, probabilities equal within
#: 2e-7 (benchmarks/image_pass_speed.py). A GPU takes the caller's batch whole.
CPU_IMAGE_BATCH = 4


def image_batch_size(device: torch.device, batch_size: int) -> int:
    """Images per forward pass of an image network on ``device`` when ``batch_size`` are wanted at once."""
    return min(batch_size, CPU_IMAGE_BATCH) if device.type == "cpu" else batch_size


@torch.no_grad()
def _batch_outputs(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, progress: bool,
                   images: bool, precision: str) -> Iterator[torch.Tensor]:
    """``model``'s outputs batch by batch, in dataset order, on ``device`` (the one loop of every predict path)."""
    layout = torch.channels_last if images else torch.contiguous_format
    model.to(device, memory_format=layout).eval()
    if images:
        batch_size = image_batch_size(device, batch_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")
    for inputs, _ in progress_bar(loader, desc="predict", nested=True, enabled=progress):
        inputs = to_device(inputs, device)
        if images and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=layout)
        with autocast(device, precision=precision):
            outputs = model(inputs)
        yield outputs.float()


def predict_proba(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str = "auto",
                  progress: bool = False, images: bool = False, precision: str = "auto") -> np.ndarray:
    """Class probabilities ``(n_items, n_classes)`` float32 in dataset order (softmax of the logits), computed in
    ``precision`` (:data:`PRECISIONS`).

    ``images``: ``model`` is an image network (inputs ``(batch, 3, h, w)``). It runs on NHWC tensors
    (channels last: on the CPU ~1.5× faster for the EfficientNet-Lite cover network, probabilities within
    1e-6 of NCHW's; on CUDA what the tensor cores want) and on a CPU in passes of :func:`image_batch_size`.
    Batches are copied from pinned memory on CUDA.
    """
    chunks = [torch.softmax(logits, dim=1).cpu().numpy()
              for logits in _batch_outputs(model, dataset, batch_size, resolve_device(device), progress, images,
                                           precision)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def predict_outputs(module: nn.Module, dataset: Dataset, batch_size: int = 256, device: str = "auto",
                    images: bool = False) -> np.ndarray:
    """``module``'s raw outputs ``(n_items, …)`` float32 in dataset order (e.g. embeddings), computed in float32;
    ``images`` as in :func:`predict_proba`."""
    chunks = [outputs.cpu().numpy()
              for outputs in _batch_outputs(module, dataset, batch_size, resolve_device(device), False, images, "fp32")]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def plain(value: Any) -> Any:
    """``value`` as tensors and plain Python data only (what ``torch.load(weights_only=True)`` accepts)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key) if not isinstance(key, (int, str)) else key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint holds tensors and plain data only; got {type(value).__name__}: {value!r:.80}")


def save_checkpoint(record: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint record (tensors + plain data) atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save(plain(record), temporary)
    return path


def unfinished_training(run_dir: Path) -> str:
    """Why a branch folder with ``last.pt`` and no ``checkpoint.pt`` has no model to use, and what to do."""
    return (f"training in {run_dir} did not finish ({RESUME_CHECKPOINT} is there; {BEST_CHECKPOINT} is written "
            "when training ends): run the same command with hydra.run.dir set to its run folder to resume it")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint record, read without running any code; one clear :class:`CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        if path.name == BEST_CHECKPOINT and (path.parent / RESUME_CHECKPOINT).is_file():
            raise FileNotFoundError(unfinished_training(path.parent))
        raise FileNotFoundError(f"No checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty: not a checkpoint")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path} holds objects other than tensors and plain data (it could run code), "
                              f"so it was refused without loading it. Only checkpoints genrefusion wrote can be "
                              f"used. ({str(error).splitlines()[0][:200]})") from None
    except Exception as error:  # noqa: BLE001 — torch raises RuntimeError, EOFError, … for broken files
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated, corrupt or not a torch file): "
                              f"{type(error).__name__}: {str(error)[:200]}") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{path} is not a genrefusion checkpoint (a {type(record).__name__}, not a record)")
    return record


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Read a ``checkpoint.pt``; with ``model``, load its weights into it. Returns the whole record."""
    record = read_checkpoint(path)
    if "model_state" not in record:
        raise CheckpointError(f"{path} has no model_state: not a genrefusion checkpoint")
    if model is not None:
        model.load_state_dict(record["model_state"])
    return record


def mean_by_group(groups: Sequence[str], y: Sequence[int], proba: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Average item probabilities per group (first-seen order); a group's items share one label.

    Used to score a clip by the mean of its windows. Returns ``(group_ids, y_per_group, proba_per_group)``.
    """
    frame = pd.DataFrame(proba).assign(_group=list(groups), _y=np.asarray(y))
    if (frame.groupby("_group", sort=False)["_y"].nunique() > 1).any():
        raise ValueError("items of one group carry different labels; cannot aggregate")
    grouped = frame.groupby("_group", sort=False)
    return list(grouped.groups), grouped["_y"].first().to_numpy(), grouped[list(range(proba.shape[1]))].mean().to_numpy()
