"""The one training loop for every torch model in genrefusion.

A model maps a batch of inputs to logits ``(batch, n_classes)``; datasets yield
``(inputs, target)`` pairs where ``inputs`` is a tensor or a tuple of tensors (hybrid models).
"""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from engine import distributed
from engine.inference import (BEST_CHECKPOINT, RESUME_CHECKPOINT, autocast, read_checkpoint, resolve_device,
                              save_checkpoint, to_device)
from engine.io import atomic_path
from engine.progress import progress_bar

log = logging.getLogger(__name__)
#: Iterations of one L-BFGS step (one epoch) and the curvature pairs it keeps (scipy's default memory,
#: as scikit-learn's L-BFGS solver uses).
LBFGS_ITERATIONS = 20
LBFGS_HISTORY = 10


@dataclass
class TrainerConfig:
    """Optimisation recipe. Defaults are the reference paper's (AdamW 1e-4, cosine, patience 5, ≤50 epochs)."""

    #: "adamw", "sgd", or "lbfgs": full-batch L-BFGS with a strong-Wolfe line search (scikit-learn's
    #: solver for small tabular data): each epoch is one step of up to :data:`LBFGS_ITERATIONS`
    #: iterations over the whole training part, and ``weight_decay`` is the L2 penalty
    #: ``weight_decay / 2 · ‖W‖²`` on weight matrices (not biases) added to the mean loss, i.e.
    #: scikit-learn's ``alpha / n_train``. It needs a deterministic loss (no dropout), ``scheduler:
    #: none``, one parameter group and one process.
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-2  # decoupled for adamw, L2 in the gradient for sgd, L2 in the loss for lbfgs
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # "cosine" (annealed over max_epochs) or "none"
    label_smoothing: float = 0.0
    class_weights: Sequence[float] | None = None
    max_epochs: int = 50
    patience: int = 5
    #: what "best" means for the kept checkpoint and for early stopping: "val_loss" (lowest, the
    #: paper's), "val_acc" (highest; the first epoch that reaches it) or "last" (the final epoch's
    #: weights, no early stopping: a fixed budget, where picking an epoch on a small validation part is noise).
    monitor: str = "val_loss"
    batch_size: int = 32
    seed: int = 42
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    #: the model and its image batches in channels-last memory layout (faster convolutions on GPUs)
    channels_last: bool = False
    #: ``torch.compile`` the model for the training passes (validation and saved weights stay uncompiled)
    compile: bool = False
    num_workers: int = 0
    progress: bool = True
    #: fastai's fine-tuning habits (a model that has ``layer_groups()``, input first, head last):
    #: train only the last group (the new head) for the first ``freeze_epochs`` epochs, then all;
    freeze_epochs: int = 0
    #: discriminative learning rates: the head gets ``lr``, each group nearer the input
    #: ``lr_decay`` times its successor's (1: one rate for all);
    lr_decay: float = 1.0
    #: progressive resizing: ``[[size, epochs], …]``; datasets with ``set_size`` are resized per epoch.
    resize_schedule: Sequence[Sequence[int]] | None = None
    #: End this call after that epoch (the run continues from ``last.pt`` when called again with the same
    #: run folder, e.g. ``hydra.run.dir``): training in slices on a shared machine.
    stop_after_epoch: int | None = None
    #: "train": batch-norm layers normalise by each batch (under torchrun on GPUs, by the global batch:
    #: SyncBatchNorm); "frozen": they keep their running statistics (fine-tuning with small batches).
    batchnorm: str = "train"

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd", "lbfgs"):
            raise ValueError(f"trainer.optimizer must be 'adamw', 'sgd' or 'lbfgs', got {self.optimizer!r}")
        if self.scheduler not in ("cosine", "none"):
            raise ValueError(f"trainer.scheduler must be 'cosine' or 'none', got {self.scheduler!r}")
        if self.optimizer == "lbfgs" and (self.scheduler != "none" or self.lr_decay != 1.0 or self.freeze_epochs):
            raise ValueError("trainer.optimizer=lbfgs takes one learning rate for all parameters and no schedule "
                             "(its line search sets each step): use scheduler none, lr_decay 1 and freeze_epochs 0")
        if self.monitor not in ("val_loss", "val_acc", "last"):
            raise ValueError(f"trainer.monitor must be 'val_loss', 'val_acc' or 'last', got {self.monitor!r}")
        if self.batchnorm not in ("train", "frozen"):
            raise ValueError(f"trainer.batchnorm must be 'train' or 'frozen', got {self.batchnorm!r}")
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ValueError("trainer.max_epochs, patience and batch_size must be ≥ 1")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"trainer.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.freeze_epochs < 0 or not 0 < self.lr_decay <= 1:
            raise ValueError("trainer.freeze_epochs must be ≥ 0 and trainer.lr_decay in (0, 1]")
        if self.resize_schedule is not None:
            if any(len(step) != 2 or step[0] < 1 or step[1] < 1 for step in self.resize_schedule):
                raise ValueError(f"trainer.resize_schedule must be [[size, epochs], …], got {self.resize_schedule}")

    def input_size(self, epoch: int) -> int | None:
        """The input size of ``epoch`` (1-based) under ``resize_schedule`` (the last size after it ends)."""
        if not self.resize_schedule:
            return None
        end = 0
        for size, epochs in self.resize_schedule:
            end += epochs
            if epoch <= end:
                return int(size)
        return int(self.resize_schedule[-1][0])


@dataclass
class FitResult:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    history: pd.DataFrame
    checkpoint_path: Path
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so model initialisation and training repeat exactly on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def balanced_class_weights(targets: Sequence[int], n_classes: int) -> list[float]:
    """Weights ``n / (k · count_c)`` (scikit-learn's 'balanced'); a class absent from training gets 0."""
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=n_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return weights.tolist()


class GlobalBatches(Sampler[list[int]]):
    """The batches of one epoch, this process's share of each.

    The order is a function of ``(seed, epoch)`` alone, so a resumed run sees exactly the batches
    the uninterrupted one would have seen, and every process of a data-parallel run draws the
    same global batches: each takes its contiguous part of every batch of ``batch_size`` items.
    A last training batch with fewer items than processes is left out (each process must take
    a step); in a single process nothing is left out.
    """

    def __init__(self, n_items: int, batch_size: int, generator: torch.Generator | None, training: bool) -> None:
        self.n_items, self.batch_size, self.generator, self.training = n_items, batch_size, generator, training

    def _global_batches(self) -> list[torch.Tensor]:
        # Drawn lazily, after DataLoader has taken its worker base seed from the same generator.
        order = torch.randperm(self.n_items, generator=self.generator) if self.generator is not None \
            else torch.arange(self.n_items)
        batches = list(order.split(self.batch_size))
        if self.training and batches and len(batches[-1]) < distributed.world_size():
            log.warning("leaving out the last %d training item(s) of the epoch: fewer than the %d processes",
                        len(batches[-1]), distributed.world_size())
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            share = batch.tensor_split(distributed.world_size())[distributed.rank()]
            if len(share):
                yield share.tolist()

    def __len__(self) -> int:
        # Counted, not drawn: a draw here (DataLoader and tqdm ask for the length) would move the
        # generator and change the order __iter__ then draws.
        full, last = divmod(self.n_items, self.batch_size)
        sizes = [self.batch_size] * full + ([last] if last else [])
        if self.training and sizes and sizes[-1] < distributed.world_size():
            sizes.pop()
        return sum(distributed.rank() < size for size in sizes)  # tensor_split leaves rank r empty iff r ≥ size


def _seed_worker(worker_id: int) -> None:
    # Processes of a data-parallel run share the loader's generator (the batch order); their workers'
    # random augmentations should not repeat each other's.
    torch.manual_seed(torch.initial_seed() + 7919 * distributed.rank())


def _loader(dataset: Dataset, config: TrainerConfig, shuffle: bool, epoch: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch) if shuffle else None
    full_batch = shuffle and config.optimizer == "lbfgs"
    batches = GlobalBatches(len(dataset), len(dataset) if full_batch else config.batch_size, generator,
                            training=shuffle)
    return DataLoader(dataset, batch_sampler=batches, generator=generator, num_workers=config.num_workers,
                      pin_memory=torch.cuda.is_available(),
                      worker_init_fn=_seed_worker if distributed.is_distributed() else None)


@dataclass
class EpochStats:
    """One pass over a loader: mean loss and accuracy, and how fast the items came through."""

    loss: float
    accuracy: float
    items: int
    seconds: float
    data_wait_seconds: float  # time spent waiting for the loader's next batch

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def data_wait_share(self) -> float:
        return self.data_wait_seconds / self.seconds if self.seconds else 0.0


def _run_epoch(model, loader, criterion, device, config, optimizer=None, desc="") -> EpochStats:
    """One pass; the loss is the (class-weighted) mean over the whole epoch, over all processes.

    ``criterion`` sums over a batch; each global batch is normalised by its total target weight,
    as ``CrossEntropyLoss(weight=…)`` does, and a batch whose classes all weigh 0 (a class absent
    from training) contributes nothing instead of 0/0. In a data-parallel run each process holds
    part of the batch and the gradients are averaged over processes, so each part's loss sum is
    divided by the batch's weight over all processes times their number: the step equals the
    single-process step on the whole batch.
    """
    training = optimizer is not None
    model.train(training)
    if training and config.batchnorm == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    total_loss, total_weight, correct, seen = 0.0, 0.0, 0, 0
    batches = iter(progress_bar(loader, desc=desc, nested=True,
                                 enabled=config.progress and distributed.is_main_process()))
    started, waited = time.perf_counter(), 0.0
    with torch.set_grad_enabled(training):
        while True:
            tic = time.perf_counter()
            try:
                inputs, targets = next(batches)
            except StopIteration:
                break
            waited += time.perf_counter() - tic
            inputs, targets = to_device(inputs, device), targets.to(device)
            if config.channels_last and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with autocast(device, config.amp):
                logits = model(inputs)
            loss_sum = criterion(logits.float(), targets)
            weight = criterion.weight[targets].sum().item() if criterion.weight is not None else float(len(targets))
            if not torch.isfinite(loss_sum):
                raise FloatingPointError(f"{desc}: loss became {loss_sum.item()}; lower trainer.lr or check inputs")
            if training:
                batch_weight = distributed.all_reduce_sum([weight], device)[0]
                if batch_weight > 0 and isinstance(optimizer, torch.optim.LBFGS):
                    optimizer.step(_penalised_objective(model, inputs, targets, criterion, batch_weight, device,
                                                        config, optimizer))
                elif batch_weight > 0:
                    optimizer.zero_grad(set_to_none=True)
                    (loss_sum / (batch_weight / distributed.world_size())).backward()
                    optimizer.step()
            total_loss += loss_sum.item()
            total_weight += weight
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
    total_loss, total_weight, correct, seen = distributed.all_reduce_sum([total_loss, total_weight, correct, seen],
                                                                         device)
    return EpochStats(total_loss / max(total_weight, 1e-12), correct / max(seen, 1), int(seen),
                      time.perf_counter() - started, waited)


def _penalised_objective(model, inputs, targets, criterion, batch_weight, device, config, optimizer):
    """L-BFGS's closure: the mean loss of the whole (full) batch plus ``weight_decay / 2 · ‖W‖²`` over the
    weight matrices, with its gradient; the line search calls it several times per iteration."""
    matrices = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]

    def objective() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, config.amp):
            logits = model(inputs)
        loss = criterion(logits.float(), targets) / batch_weight
        loss = loss + config.weight_decay / 2 * sum(p.pow(2).sum() for p in matrices)
        loss.backward()
        return loss

    return objective


def _layer_groups(model: nn.Module, config: TrainerConfig) -> list[list[nn.Parameter]]:
    """The model's layer groups when the recipe uses them, else one group of every parameter."""
    uses_groups = config.lr_decay != 1.0 or config.freeze_epochs > 0
    if uses_groups and not hasattr(model, "layer_groups"):
        raise ValueError("trainer.lr_decay / freeze_epochs need a model with layer_groups() (the cover models)")
    return model.layer_groups() if uses_groups else [[p for p in model.parameters() if p.requires_grad]]


def _build_optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    groups = _layer_groups(model, config)
    params = [{"params": group, "lr": config.lr * config.lr_decay ** (len(groups) - 1 - i)}
              for i, group in enumerate(groups)] if len(groups) > 1 else groups[0]
    if config.optimizer == "lbfgs":
        return torch.optim.LBFGS(groups[0], lr=config.lr, max_iter=LBFGS_ITERATIONS, history_size=LBFGS_HISTORY,
                                 line_search_fn="strong_wolfe")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _set_epoch(model: nn.Module, datasets: Sequence[Dataset], config: TrainerConfig, epoch: int) -> None:
    """Freeze all but the head during ``freeze_epochs``; resize datasets to the epoch's input size."""
    if config.freeze_epochs:
        groups = model.layer_groups()
        for group in groups[:-1]:
            for parameter in group:
                parameter.requires_grad_(epoch > config.freeze_epochs)
    size = config.input_size(epoch)
    if size is not None:
        for dataset in datasets:
            if not hasattr(dataset, "set_size"):
                raise ValueError("trainer.resize_schedule needs datasets with set_size() (the cover images)")
            dataset.set_size(size)


def _share_batchnorm_statistics(model: nn.Module, config: TrainerConfig, device: torch.device) -> None:
    """Under torchrun, batch-norm layers in training mode normalise by the whole global batch (as one
    process would) through SyncBatchNorm, which PyTorch provides on GPUs only; on CPUs they see each
    process's part alone, and the run says so."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or config.batchnorm == "frozen":
        return
    if device.type != "cuda":
        log.warning("data-parallel on %s: batch-norm statistics are per process (%d layers); "
                    "trainer.batchnorm=frozen keeps them fixed instead", device.type, len(layers))
        return
    for name, child in list(model.named_children()):  # in place: the caller's model object is what trains
        setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))


def _check_full_batch(model: nn.Module) -> None:
    """L-BFGS's line search compares losses of the same objective: refuse what would make it noisy."""
    if distributed.is_distributed():
        raise ValueError("trainer.optimizer=lbfgs runs in one process (its line search needs the whole "
                         "batch's loss); run it without torchrun")
    noisy = [name for name, module in model.named_modules()
             if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0]
    if noisy:
        raise ValueError(f"trainer.optimizer=lbfgs needs a deterministic loss, but the model has dropout at "
                         f"{noisy}: set the model's dropout to 0")


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with the interrupted one (all but where to stop)."""
    return {key: value for key, value in config.items() if key != "stop_after_epoch"}


def _placed(model: nn.Module, config: TrainerConfig) -> tuple[torch.device, nn.Module]:
    """``model`` on this process's device; returns the device and the module the training passes call
    (wrapped in ``DistributedDataParallel`` under torchrun, compiled with ``config.compile``)."""
    device = distributed.local_device(resolve_device(config.device))
    model.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    trained = model
    if distributed.is_distributed():
        # Same initial weights everywhere (DDP also broadcasts rank 0's), then per-process dropout
        # and augmentation draws.
        torch.manual_seed(config.seed + 7919 * distributed.rank())
        _share_batchnorm_statistics(model, config, device)
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=config.freeze_epochs > 0)
    if config.compile:
        trained = torch.compile(trained)
    return device, trained


def _objective(model: nn.Module, config: TrainerConfig, device: torch.device) -> tuple[nn.Module, Any, Any]:
    """The loss (summed: each step normalises by its global batch's weight), the optimiser and the schedule."""
    weights = torch.tensor(config.class_weights, dtype=torch.float32, device=device) if config.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing, reduction="sum")
    optimizer = _build_optimizer(model, config)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.max_epochs)
        if config.scheduler == "cosine" else None
    )
    return criterion, optimizer, scheduler


def _resumed_state(resume_path: Path, read: bool, model: nn.Module, optimizer: Any, scheduler: Any,
                   config: TrainerConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The loop state and best weights to start from: fresh, or those of ``resume_path`` (read by rank 0 when
    ``read``, shared with every process), whose model, optimiser, schedule and random state are restored."""
    # best_score: the monitored quantity, lower is better (minus the accuracy for "val_acc").
    state = {"epoch": 0, "best_score": math.inf, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
             "history": []}
    best_state = copy.deepcopy(model.state_dict())
    saved = distributed.broadcast_object(read_checkpoint(resume_path) if read and resume_path.is_file() else None)
    if saved is None:
        return state, best_state
    # A setting added since that file was written had its default then.
    if _resumable({**asdict(TrainerConfig()), **saved["config"]}) != _resumable(asdict(config)):
        raise ValueError(f"{resume_path} was written with another trainer config; use a new run folder")
    if len(saved["torch_rng"]) != distributed.world_size():
        raise ValueError(f"{resume_path} was written by {len(saved['torch_rng'])} process(es), this run has "
                         f"{distributed.world_size()}; resume with the same --nproc_per_node")
    model.load_state_dict(saved["model_state"])
    optimizer.load_state_dict(saved["optimizer_state"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler_state"])
    torch.set_rng_state(saved["torch_rng"][distributed.rank()])
    log.info("resuming %s after epoch %d", resume_path.parent, saved["loop_state"]["epoch"])
    return {"best_score": saved["loop_state"]["best_val_loss"], **saved["loop_state"]}, saved["best_state"]


def _record_epoch(state: dict[str, Any], epoch: int, train: EpochStats, val: EpochStats, lr: float, seconds: float,
                  monitor: str) -> bool:
    """Add the epoch to ``state`` (its history row, the best epoch so far, the epochs without progress);
    returns whether the epoch is the new best (``monitor: last``: every epoch is)."""
    score = val.loss if monitor == "val_loss" else -val.accuracy
    improved = score < state["best_score"] or monitor == "last"
    if improved:
        state.update(best_score=score, best_val_loss=val.loss, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    state["history"].append({"epoch": epoch, "train_loss": train.loss, "train_acc": train.accuracy,
                             "val_loss": val.loss, "val_acc": val.accuracy, "lr": lr, "seconds": seconds,
                             "train_items_per_s": train.items_per_s, "train_data_wait_share": train.data_wait_share})
    return improved


def _write_progress(run_dir: Path, state: dict[str, Any], model: nn.Module, optimizer: Any, scheduler: Any,
                    best_state: dict[str, torch.Tensor], rng_states: list[torch.Tensor], config: TrainerConfig) -> None:
    """``history.csv`` and ``last.pt`` (everything a resumed run needs) after an epoch."""
    with atomic_path(run_dir / "history.csv") as temporary:
        pd.DataFrame(state["history"]).to_csv(temporary, index=False)
    save_checkpoint({"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                     "scheduler_state": scheduler.state_dict() if scheduler else None,
                     "best_state": best_state, "loop_state": state, "torch_rng": rng_states,
                     "config": asdict(config)}, run_dir / RESUME_CHECKPOINT)


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    config: TrainerConfig,
    run_dir: str | Path,
    metadata: dict[str, Any] | None = None,
    resume: bool = True,
) -> FitResult:
    """Train ``model`` with early stopping on validation loss (or accuracy; or none, keeping the last epoch:
    ``config.monitor``); the best weights end up in ``model``.

    Writes into ``run_dir``: ``history.csv`` and ``last.pt`` (everything needed to resume) after every
    epoch, and ``checkpoint.pt`` (best state dict + ``metadata`` such as the label list and config)
    once training ends. With ``resume=True`` and a ``last.pt`` present, training continues from
    it (the config and number of processes must be the same but for ``stop_after_epoch``).

    Under ``torchrun`` (see :mod:`engine.distributed`) the model trains data-parallel: every
    process calls ``fit`` with the same arguments, rank 0 alone writes ``run_dir`` and its
    ``last.pt`` is what every process resumes from.
    """
    run_dir = Path(run_dir)
    if config.optimizer == "lbfgs":
        _check_full_batch(model)
    writes = distributed.is_main_process()
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
    device, trained = _placed(model, config)
    criterion, optimizer, scheduler = _objective(model, config, device)
    state, best_state = _resumed_state(run_dir / RESUME_CHECKPOINT, resume and writes, model, optimizer, scheduler,
                                       config)
    started = time.perf_counter()
    stopped_early = state["bad_epochs"] >= config.patience
    # Counted by hand after each epoch: a loop that breaks mid-epoch (stop_after_epoch) counts it too.
    epochs = progress_bar(desc="epochs", unit="epoch", enabled=config.progress and writes, initial=state["epoch"],
                          total=config.max_epochs)
    for epoch in range(state["epoch"] + 1, config.max_epochs + 1):
        if stopped_early:
            break
        tic = time.perf_counter()
        _set_epoch(model, (train_set, val_set), config, epoch)
        lr = optimizer.param_groups[-1]["lr"]
        train = _run_epoch(trained, _loader(train_set, config, True, epoch), criterion, device, config, optimizer,
                           desc=f"train {epoch}")
        val = _run_epoch(model, _loader(val_set, config, False), criterion, device, config, desc=f"val {epoch}")
        if scheduler is not None:
            scheduler.step()
        if _record_epoch(state, epoch, train, val, lr, time.perf_counter() - tic, config.monitor):
            best_state = copy.deepcopy(model.state_dict())
        stopped_early = state["bad_epochs"] >= config.patience
        rng_states = distributed.all_gather_object(torch.get_rng_state())
        if writes:
            _write_progress(run_dir, state, model, optimizer, scheduler, best_state, rng_states, config)
        epochs.set_postfix(train_loss=f"{train.loss:.3f}", val_loss=f"{val.loss:.3f}", val_acc=f"{val.accuracy:.3f}",
                           refresh=False)
        epochs.update()
        if config.stop_after_epoch is not None and epoch >= config.stop_after_epoch:
            break
    epochs.close()
    if config.freeze_epochs:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    model.load_state_dict(best_state)
    if writes:
        # Written once, when training ends: a run killed mid-way leaves last.pt (to resume) and no
        # checkpoint.pt, so nothing scores or evaluates a half-trained model as if it were the result.
        save_checkpoint({"model_state": best_state, "epoch": state["best_epoch"], "val_loss": state["best_val_loss"],
                         "trainer": asdict(config), **(metadata or {})}, run_dir / BEST_CHECKPOINT)
    return FitResult(
        best_epoch=state["best_epoch"], best_val_loss=state["best_val_loss"], epochs_run=state["epoch"],
        stopped_early=stopped_early, history=pd.DataFrame(state["history"]),
        checkpoint_path=run_dir / BEST_CHECKPOINT, seconds=time.perf_counter() - started,
    )
