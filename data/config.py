"""Config helpers shared by the Hydra entry points that read the data floor: the data-root resolver, the
generated ``labels`` group, the composed config, each branch's data and split, and its prepared items."""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from data.items import LoadResult
from data.labels import LABEL_SETS, apply_label_set
from data.prepare import PreparedData, prepare_items
from data.root import resolve_data_root
from data.splits import SplitSpec
from engine.settings import BranchTrainer, checked_dataclass
from engine.trainer import TrainerConfig


def _data_path(relative: str, *, _root_: DictConfig) -> str:
    configured = OmegaConf.select(_root_, "paths.data_root", default=None)
    return str(resolve_data_root(configured) / relative)


def register_configs() -> None:
    """What every entry point registers before Hydra composes its config.

    - the resolver ``${data_root:covers/covers.csv}`` → that file under the resolved data root;
    - the ``labels`` config group, one entry per :data:`data.labels.LABEL_SETS` (its one
      definition), so ``labels=paper5`` works without a YAML copy that could disagree with it;
    - ``trainer/base``: :class:`engine.trainer.TrainerConfig`'s defaults, which ``trainer/paper`` extends (the
      defaults live once, in the dataclass);
    - ``branch_trainer/overlay``: a branch's own trainer settings (:data:`engine.settings.BranchTrainer`),
      which every branch config's ``trainer`` extends.
    """
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("data_root"):
        OmegaConf.register_new_resolver("data_root", _data_path)
    store = ConfigStore.instance()
    for label_set in LABEL_SETS.values():
        store.store(group="labels", name=label_set.name,
                    node={"name": label_set.name, "classes": list(label_set.classes),
                          "aliases": dict(label_set.aliases)})
    store.store(group="trainer", name="base", node=asdict(TrainerConfig()))
    store.store(group="branch_trainer", name="overlay", node=BranchTrainer)


#: The Hydra config folder the entry points compose from.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The main job's config with ``overrides``, composed outside ``@hydra.main`` (for drivers that run many
    configs). ``paths.root_dir`` is the working directory, as under ``@hydra.main``, unless overridden."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"paths.root_dir={Path.cwd()}", *overrides])


def split_spec(node: DictConfig) -> SplitSpec:
    """A ``split`` config node as a checked :class:`SplitSpec` (a misspelt key is an error naming the known ones)."""
    values = OmegaConf.to_container(node, resolve=True)
    values.pop("name", None)
    return checked_dataclass(SplitSpec, values, "split")


def branch_data(cfg: DictConfig, branch: DictConfig) -> DictConfig:
    """The data a branch reads: the run's paired catalogue (``cfg.data``) when there is one, else its own."""
    return cfg.data if cfg.get("data") else branch.data


def branch_split(cfg: DictConfig, branch: DictConfig) -> DictConfig:
    """The split a branch uses: a paired catalogue's one split (``cfg.split``) for both branches; without
    one, the branch's own (GTZAN audio's artist-filtered split) or else ``cfg.split``."""
    if cfg.get("data"):
        return cfg.split
    return branch.get("split") or cfg.split


def _split_file(cfg: DictConfig, data_cfg: DictConfig, spec: SplitSpec) -> Path:
    """``<splits_dir>/<data name>-<label set>-<protocol>-s<seed>.csv`` (one file per data, label set and protocol)."""
    name = f"{data_cfg.name}-{cfg.labels.name}-{spec.protocol}-s{spec.seed}"
    if spec.protocol == "predefined":
        name = f"{data_cfg.name}-{cfg.labels.name}-{Path(spec.predefined_path).name}"
    elif spec.protocol == "kfold":
        name = f"{data_cfg.name}-{cfg.labels.name}-kfold{spec.folds}-s{spec.seed}"
    return Path(cfg.paths.splits_dir) / f"{name}.csv"


def branch_split_spec(cfg: DictConfig, branch: DictConfig) -> tuple[SplitSpec, Path]:
    """The branch's split and where it is saved.

    Inside cross-fitting (``cfg.inner_fold``: ``{fold, folds}``, set by :mod:`fusion.protocol`) it is the
    k-fold split of the training part of the branch's own split, saved beside it.
    """
    data_cfg = branch_data(cfg, branch)
    split_spec(cfg.split)  # the run's own split is checked even where a branch has its own
    spec = split_spec(branch_split(cfg, branch))
    path = _split_file(cfg, data_cfg, spec)
    inner = cfg.get("inner_fold")
    if inner:
        check_inner_folds_possible(spec, data_cfg.name)
        spec = SplitSpec(protocol="kfold", seed=spec.seed, val_fraction=spec.val_fraction, folds=int(inner.folds),
                         fold=int(inner.fold), within_path=str(path), within_column=spec.column, within_part="train")
        path = path.with_name(f"{path.stem}-{spec.within_column}-train-kfold{spec.folds}.csv")
    return spec, path


def check_inner_folds_possible(spec: SplitSpec, data_name: str) -> None:
    """Refuse cross-fitting's inner folds inside a predefined split.

    Inner folds are made from the items' ``group`` column. A predefined split may keep apart more
    than that: GTZAN's fault-filtered split keeps artists apart, but GTZAN has no artist ids, so
    its groups are single clips. Inner folds would then put one artist in both the fitting and the
    predicted fold, and the out-of-fold predictions would look better than the test's (measured on
    the 3-genre split: audio 0.81–0.93 in the inner folds, 0.736 on test), so the fusion head
    would over-trust that branch.
    """
    if spec.protocol == "predefined":
        raise ValueError(
            f"fusion.fit_on=crossfit: {data_name} uses the predefined split {Path(spec.predefined_path).name}, "
            "which keeps apart more than the items' groups do (GTZAN: artists, but its groups are single clips), "
            "so inner folds of its training part would share artists and inflate the out-of-fold predictions "
            "the head is fitted on. Use fusion.fit_on=validation with this data, or a paired catalogue whose "
            "items carry artist ids (data=…)")


def check_crossfit_possible(cfg: DictConfig) -> None:
    """Before any training: every branch's split admits cross-fitting's inner folds (see :func:`check_inner_folds_possible`)."""
    for branch in (cfg.audio, cfg.covers):
        check_inner_folds_possible(split_spec(branch_split(cfg, branch)), branch_data(cfg, branch).name)


#: Inside :func:`tables_loaded_once`: each loader config already loaded (its resolved JSON) → its table.
_LOADED_TABLES: ContextVar[dict[str, LoadResult] | None] = ContextVar("loaded_tables", default=None)


@contextmanager
def tables_loaded_once() -> Iterator[None]:
    """Inside this block :func:`load_items` runs each distinct loader config once and hands out copies.

    A run trains its branches once per outer fold, inner fold and candidate model, and each training
    prepares its items: a cross-fitted 3×3 k-fold run on ``spotify_albums`` read the MusicOSet
    tables 72 times, 60% of its time. One load also gives every fold of the run the same table,
    even if a file under the data root changes while the run trains.
    """
    token = _LOADED_TABLES.set({})
    try:
        yield
    finally:
        _LOADED_TABLES.reset(token)


def load_items(loader: DictConfig) -> LoadResult:
    """The item table of a data config's ``loader`` (``instantiate``), once per :func:`tables_loaded_once`
    block; each caller gets its own copy of the frames, so none can change another's."""
    loaded_tables = _LOADED_TABLES.get()
    if loaded_tables is None:
        return instantiate(loader)
    key = json.dumps(OmegaConf.to_container(loader, resolve=True), sort_keys=True)
    if key not in loaded_tables:
        loaded_tables[key] = instantiate(loader)
    loaded = loaded_tables[key]
    return LoadResult(loaded.items.copy(), loaded.problems.copy())


def prepare_from_config(cfg: DictConfig, branch: DictConfig, run_dir: Path) -> PreparedData:
    """Load the branch's data, apply ``cfg.labels``, load/make the branch's split, record load problems.

    Every branch (and fusion) given the same data, label set and protocol shares one saved split.
    """
    data_cfg = branch_data(cfg, branch)
    loaded = load_items(data_cfg.loader)
    spec, path = branch_split_spec(cfg, branch)
    prepared = prepare_items(loaded, list(cfg.labels.classes), spec, path, aliases=dict(cfg.labels.aliases),
                             dedupe_on=data_cfg.get("dedupe_on"), ambiguous_on=data_cfg.get("ambiguous_on"))
    prepared.name = data_cfg.name
    prepared.loader = OmegaConf.to_container(data_cfg.loader, resolve=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(prepared.problems):
        prepared.problems.to_csv(run_dir / "load_problems.csv", index=False)
    return prepared


def run_items(record: dict[str, Any]) -> pd.DataFrame:
    """A trained run's items with their split part and class index, reloaded as the run loaded them
    (the loader and split its checkpoint's model card records)."""
    card = record["card"]
    loaded = instantiate(card["data_loader"])
    items, _ = apply_label_set(loaded.items, record["labels"], aliases=record.get("aliases"))
    split = pd.read_csv(card["split_file"], dtype=str, keep_default_na=False)
    parts = split[["item_id", card["split_column"]]].rename(columns={card["split_column"]: "split"})
    items = items.merge(parts, on="item_id", how="inner")
    return items.assign(y=items["label"].map({label: i for i, label in enumerate(record["labels"])}))
