"""Data-parallel training under ``torchrun``: which process this is, and the few collectives the trainer needs.

``torchrun --nproc_per_node=N scripts/run.py …`` starts N copies of the same job (``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment). Every copy runs the whole job in step;
the one trainer splits each global batch between them and averages their gradients
(``DistributedDataParallel``), so the recipe (``trainer.batch_size`` is the global batch) does
not change with N. Rank 0 alone writes the run folder; the others write into a scratch folder
removed when they exit (:func:`scratch_run_dir_overrides`). Outside ``torchrun`` every function
here answers for a single process and costs nothing.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 outside ``torchrun``)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def launched_rank() -> int:
    """The rank ``torchrun`` gave this process (0 when not launched by it), before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def init_from_environment() -> bool:
    """Join the process group ``torchrun`` describes (NCCL with CUDA, else gloo); ``False`` when not launched
    with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def shut_down() -> None:
    if is_distributed():
        dist.destroy_process_group()


def scratch_run_dir_overrides() -> list[str]:
    """Hydra overrides for a rank other than 0: its run folder is a scratch folder removed at exit.

    Every rank runs the same job (reports and predictions included); only rank 0's copy is kept.
    """
    if launched_rank() == 0:
        return []
    scratch = tempfile.mkdtemp(prefix=f"genrefusion-rank{launched_rank()}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return [f"hydra.run.dir={scratch}"]


def local_device(device: torch.device) -> torch.device:
    """Under ``torchrun`` a CUDA device means this process's own GPU (``cuda:LOCAL_RANK``)."""
    if is_distributed() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64; unchanged in a single process)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every process (picklable objects)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered
