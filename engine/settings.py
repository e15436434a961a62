"""Typed settings from config nodes: a misspelt key or a value of the wrong type is one readable error.

``checked_dataclass`` builds a settings dataclass from a config node; ``trainer_config`` is the run's
trainer settings with a branch's own laid over them (the one :class:`engine.trainer.TrainerConfig`);
``with_values`` derives a config with some values set, leaving the caller's as it was (configs are input).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import field, fields, make_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engine.trainer import TrainerConfig, balanced_class_weights

_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _check_type(where: str, name: str, annotation: str, value: Any) -> None:
    """A scalar setting must have its declared type (``max_epochs=abc`` is an error, not a string)."""
    options = [part.strip() for part in str(annotation).split("|")]
    if value is None:
        if "None" not in options:
            raise ValueError(f"{where}.{name} must be set (got null)")
        return
    scalars = [_SCALARS[o] for o in options if o in _SCALARS]
    if len(scalars) != len([o for o in options if o != "None"]):
        return  # a container or other type: checked by the dataclass itself
    ok = any(isinstance(value, t) and not (t is not bool and isinstance(value, bool)) for t in scalars)
    ok = ok or (float in scalars and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        expected = " or ".join(o for o in options if o != "None")
        raise ValueError(f"{where}.{name} must be {expected}, got {value!r}")


#: A branch's own trainer settings (``audio.trainer``, ``covers.trainer``): every key of :class:`TrainerConfig`,
#: null (the default) keeping the run's ``trainer`` value. Registered as the ``branch_trainer`` config
#: (``data.config.register_configs``), so ``audio.trainer.monitor=val_acc`` needs no ``+``. The values are
#: untyped here and checked by :func:`trainer_config` when the branch trains: a wrong type in one job of a
#: sweep then fails that job alone (with one readable line), not the composition of the whole sweep.
BranchTrainer = make_dataclass("BranchTrainer", [(f.name, Any, field(default=None)) for f in fields(TrainerConfig)])


def checked_dataclass(cls: type, node: DictConfig | dict, where: str) -> Any:
    """``cls`` built from a config node: a key it does not declare, or a scalar of the wrong type, is an
    error naming ``where`` (a misspelt key would otherwise be ignored and its default used)."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    declared = {f.name: f.type for f in fields(cls)}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(declared)}")
    for name, value in values.items():
        _check_type(where, name, declared[name], value)
    return cls(**values)


def trainer_config(cfg: DictConfig, override: DictConfig | dict | None = None,
                   train_targets: Sequence[int] | None = None, n_classes: int | None = None) -> TrainerConfig:
    """``cfg.trainer`` with a branch's own trainer settings laid over it (its null ones keep the run's), checked
    for typos.

    ``class_weights: balanced`` becomes scikit-learn's balanced weights of ``train_targets``.
    """
    checked_dataclass(TrainerConfig, cfg.trainer, "trainer")  # the run's own settings are checked even where overridden
    if isinstance(override, DictConfig):
        override = OmegaConf.to_container(override, resolve=True)
    own = {key: value for key, value in (override or {}).items() if value is not None}
    merged = OmegaConf.to_container(OmegaConf.merge(cfg.trainer, own), resolve=True)
    if merged.get("class_weights") == "balanced":
        if train_targets is None or n_classes is None:
            raise ValueError("trainer.class_weights=balanced needs the training targets")
        merged["class_weights"] = balanced_class_weights(train_targets, n_classes)
    elif isinstance(merged.get("class_weights"), str):
        raise ValueError(f"trainer.class_weights must be null, 'balanced' or a list, got {merged['class_weights']!r}")
    return checked_dataclass(TrainerConfig, merged, "trainer")


def with_values(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with ``values`` (dotted keys, each already in the config) set; ``cfg`` is unchanged."""
    derived = copy.deepcopy(cfg)
    for key, value in values.items():
        OmegaConf.update(derived, key, value, merge=False)
    return derived
