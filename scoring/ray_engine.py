"""Batch scoring on Ray Data: the same job as :func:`scoring.jobs.score_table`, spread over a Ray cluster.

The driver plans the job (table read, ids resolved, rows already written left out) and hands the
rows to Ray as blocks of ``batch_size``. CPU tasks run :func:`scoring.tracks.prepare_batch` on each
block (downloads, cover decoding, audio decoding and features; on a GPU cluster the GTZAN features
are left to the actors, which compute them on their GPU in batches); an actor pool runs
:func:`scoring.tracks.output_rows` (each actor loads the model folder once; one GPU per actor where
the cluster has GPUs); the driver writes each scored block as it arrives, so an interrupted run
resumes after the blocks already written. The numbers are the local scorer's: the same two
functions compute them.

``address=None`` starts a local Ray instance (``num_cpus`` of this machine's cores); ``auto`` or
``ray://host:10001`` joins a running cluster, whose workers must reach the model folder, the
table's files and the cache (a shared filesystem) and have genrefusion installed.
"""
from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import Any

import pandas as pd

from acquire.http import Downloader, RetryPolicy
from audio.extract import compile_feature_kernels
from engine.inference import resolve_device
from engine.progress import progress_bar
from scoring.jobs import plan_job, resolve_batch_size
from scoring.tracks import ScoringInputs, load_track_scorer, output_rows, prepare_batch, scoring_inputs

log = logging.getLogger(__name__)


def _prepare_block(block: pd.DataFrame, spec: ScoringInputs, cache_dir: str | None,
                   download_dir: str, download: RetryPolicy | None, defer_features: bool) -> pd.DataFrame:
    # One block in, one row out: the prepared batch travels to the actors as one object.
    prepared = prepare_batch(spec, block, Downloader(Path(download_dir), download), cache_dir,
                             defer_features=defer_features)
    return pd.DataFrame({"prepared": [pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL)]})


class _ScoringActor:
    """Holds the model folder's models (loaded once) and scores prepared batches."""

    def __init__(self, model_dir: str, device: str, cover_precision: str) -> None:
        import torch

        self.scorer = load_track_scorer(model_dir, cover_precision)
        self.device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([output_rows(self.scorer, pickle.loads(blob), self.device) for blob in batch["prepared"]],
                         ignore_index=True)


def score_table_ray(input_table: str | Path, model_dir: str | Path, output: str | Path, shard: str = "0/1",
                    batch_size: int | str = "auto", catalogue: str | Path | None = None, cache_dir: str | Path | None = None,
                    download_dir: str | Path | None = None, device: str = "auto", address: str | None = None,
                    num_cpus: int | None = None, actors: int = 1, gpus_per_actor: float | None = None,
                    actor_cpus: float = 0.5, progress: bool = True, also_csv: bool = False,
                    download: RetryPolicy | None = None, features_on_actors: bool | None = None,
                    cover_precision: str = "auto") -> dict[str, Any]:
    """Score this shard's rows of ``input_table`` into ``output`` on Ray; the arguments shared with
    :func:`scoring.jobs.score_table` mean the same.

    ``actors`` model replicas score prepared batches; ``gpus_per_actor`` (``None``: 1 when the
    cluster has GPUs, else 0) and ``actor_cpus`` are what each reserves, the rest of the CPUs
    preparing batches. ``features_on_actors`` (``None``: when the actors have GPUs): the CPU tasks
    only decode the audio of a model that reads GTZAN features, and the actors compute the
    features on their device before the models. Returns the job's summary, with the cluster's resources.
    """
    import ray
    import ray.data

    batch_size = resolve_batch_size(batch_size, resolve_device(device))
    job = plan_job(input_table, model_dir, output, shard, catalogue, download_dir, batch_size, cover_precision)
    try:
        if actors < 1:
            raise ValueError(f"ray.actors must be >= 1, got {actors}")
        if features_on_actors is not None and not isinstance(features_on_actors, bool):
            raise ValueError(f"ray.features_on_actors must be true, false or null, got {features_on_actors!r}")
        start = time.perf_counter()
        statuses: list[str] = []
        batches = job.batches(batch_size)
        if batches:
            if job.scorer.audio_model is not None:
                compile_feature_kernels()  # before the tasks compute features side by side (on this machine's cache)
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     ignore_reinit_error=True, log_to_driver=True,
                     logging_level=logging.WARNING)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the driver's one bar below counts written batches
            resources = ray.cluster_resources()
            gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if resources.get("GPU", 0) else 0.0)
            # As many batches in preparation as the cluster has CPUs, in what the actors leave (the models
            # take little of a CPU beside the audio features): 2 CPUs and one actor of half a CPU run two
            # tasks of 0.75. A task asking for more than is left would wait forever.
            spare = resources.get("CPU", 0) - actors * actor_cpus
            if spare <= 0:
                raise ValueError(f"{actors} actor(s) of {actor_cpus} CPU leave none of the cluster's "
                                 f"{resources.get('CPU', 0):g} CPUs to prepare batches; "
                                 "lower ray.actors or ray.actor_cpus")
            task_cpus = min(1.0, spare / max(1, int(resources.get("CPU", 0))))
            on_actors = bool(gpus) if features_on_actors is None else bool(features_on_actors)
            # Columns as text, as the local engine reads them, so Arrow does not guess an id column's type.
            blocks = [block.astype({c: str for c in block.columns if c != "row"}) for block in batches]
            scored = (ray.data.from_pandas(blocks)
                      .map_batches(_prepare_block, batch_size=None, batch_format="pandas", num_cpus=task_cpus,
                                   fn_kwargs={"spec": scoring_inputs(job.scorer),
                                              "cache_dir": str(cache_dir) if cache_dir else None,
                                              "download_dir": str(job.download_dir), "download": download,
                                              "defer_features": on_actors})
                      .map_batches(_ScoringActor, batch_size=1, batch_format="pandas",
                                   compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus,
                                   num_cpus=actor_cpus,
                                   fn_constructor_kwargs={"model_dir": str(Path(model_dir).resolve()),
                                                          "device": device,
                                                          "cover_precision": cover_precision}))
            bar = progress_bar(desc=f"score shard {job.shard} (ray)", total=len(job.todo), unit="track",
                               enabled=progress)
            for out in scored.iter_batches(batch_size=None, batch_format="pandas"):
                out = out.reset_index(drop=True)
                job.writer.write(out)
                statuses += out["status"].tolist()
                bar.update(len(out))
            bar.close()
        summary = job.finish(statuses, time.perf_counter() - start, also_csv)
        if batches:
            summary["ray"] = {"address": address or "local", "cpus": resources.get("CPU"),
                              "gpus": resources.get("GPU", 0), "actors": actors, "gpus_per_actor": gpus,
                              "cpus_per_prepare_task": task_cpus, "features_on_actors": on_actors}
        return summary
    finally:
        job.writer.release()
