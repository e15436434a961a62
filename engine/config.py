"""Config helpers shared by the Hydra entry points."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data.root import resolve_data_root
from data.splits import SplitSpec
from engine.trainer import TrainerConfig, balanced_class_weights


def _data_path(relative: str, *, _root_: DictConfig) -> str:
    configured = OmegaConf.select(_root_, "paths.data_root", default=None)
    return str(resolve_data_root(configured) / relative)


def register_resolvers() -> None:
    """``${data_root:covers/covers.csv}`` → the file under the resolved data root."""
    if not OmegaConf.has_resolver("data_root"):
        OmegaConf.register_new_resolver("data_root", _data_path)


def _dataclass_from(cls: type, node: DictConfig | dict, where: str) -> Any:
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def trainer_config(cfg: DictConfig, override: DictConfig | dict | None = None,
                   train_targets: Sequence[int] | None = None, n_classes: int | None = None) -> TrainerConfig:
    """``cfg.trainer`` with a branch's own trainer settings laid over it, checked for typos.

    ``class_weights: balanced`` becomes scikit-learn's balanced weights of ``train_targets``.
    """
    merged = OmegaConf.to_container(OmegaConf.merge(cfg.trainer, override or {}), resolve=True)
    if merged.get("class_weights") == "balanced":
        if train_targets is None or n_classes is None:
            raise ValueError("trainer.class_weights=balanced needs the training targets")
        merged["class_weights"] = balanced_class_weights(train_targets, n_classes)
    elif isinstance(merged.get("class_weights"), str):
        raise ValueError(f"trainer.class_weights must be null, 'balanced' or a list, got {merged['class_weights']!r}")
    return _dataclass_from(TrainerConfig, merged, "trainer")


def split_spec(cfg: DictConfig) -> SplitSpec:
    node = OmegaConf.to_container(cfg.split, resolve=True)
    node.pop("name", None)
    return _dataclass_from(SplitSpec, node, "split")
