"""Batch-scoring throughput in steady state: tracks/s of scripts/score.py's path, and what bounds it.

Usage: .venv/bin/python benchmarks/score_throughput.py MODEL_DIR [n_rows=2000] [n_jobs=2] [source=gtzan|paired]
       [batch_size=auto] [distinct=48] [cover_precision=auto|bf16|fp32]

MODEL_DIR is a main-job run folder (covers/, audio/, fusion/); it is timed whole (fused) and
branch by branch. ``distinct`` real clips and covers (``gtzan``: GTZAN's Ogg clips at 22,050 Hz
with Discogs covers; ``paired``: the 47 real tracks' own 30-s MP3 previews at 44.1 kHz stereo and
their covers) are tiled to ``n_rows`` rows, each row reading its files under a name of its own (a
symbolic link), with caching off, so nothing computed for one row is reused for another. 1 row in
20 is broken on purpose (missing file, corrupt image, empty row, unknown id).

Reported per model: start-up (model loading and feature workers, before the first row) apart from
the job, the seconds to the first written batch, steady-state tracks/s after it, and each pipeline
stage's busy share of the job's time (the stage nearest 1.0 bounds it). Writes
``benchmarks/results/score_throughput[_cuda][_paired][_bf16].json`` with the machine it ran on
(``_bf16``: the cover network in bf16 where the device's default, ``auto``, is not), after each model
(``complete`` once all three are in).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from audio.extract import start_workers
from data.covers import load_covers_table
from data.gtzan import load_gtzan_audio
from data.root import resolve_data_root
from engine.io import write_json
from engine.run import machine_info
from scoring.jobs import score_table
from scoring.tracks import load_track_scorer

SOURCES = ("gtzan", "paired")


def source_files(source: str, distinct: int) -> tuple[list[str], list[str]]:
    """``distinct`` (cover, audio) files of real data to tile."""
    root = resolve_data_root()
    if source == "paired":
        tracks = pd.read_csv(root / "paired" / "tracks.csv")
        covers = [str(root / "paired" / p) for p in tracks["cover_path"]]
        audio = [str(root / "paired" / p) for p in tracks["audio_path"]]
    elif source == "gtzan":
        covers = load_covers_table(root / "covers" / "covers.csv").items["cover_path"].drop_duplicates() \
            .sample(distinct, random_state=0).tolist()
        audio = load_gtzan_audio(root / "gtzan" / "audio").items["audio_path"].sample(distinct, random_state=0).tolist()
    else:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    n = min(distinct, len(covers), len(audio))
    return covers[:n], audio[:n]


def track_table(n_rows: int, folder: Path, covers: list[str], audio: list[str]) -> Path:
    """``n_rows`` rows tiled from ``covers`` and ``audio``, each row's files under names of their own."""
    links = folder / "files"
    links.mkdir()
    rows = []
    for i in range(n_rows):
        cover, clip = Path(covers[i % len(covers)]), Path(audio[i % len(audio)])
        (links / f"{i}{cover.suffix}").symlink_to(cover)
        (links / f"{i}{clip.suffix}").symlink_to(clip)
        rows.append({"track_id": f"bench-{i}", "cover_path": str(links / f"{i}{cover.suffix}"),
                     "audio_path": str(links / f"{i}{clip.suffix}")})
    table = pd.DataFrame(rows)
    (folder / "corrupt.jpg").write_text("not an image")
    broken = {0: ("", str(folder / "missing.ogg")), 1: (str(folder / "corrupt.jpg"), ""), 2: ("", ""), 3: ("", "")}
    for i in range(0, n_rows, 20):
        kind = (i // 20) % 4
        table.loc[i, ["cover_path", "audio_path"]] = broken[kind]
        if kind == 3:
            table.loc[i, "track_id"] = "unknown-id"
        elif kind == 2:
            table.loc[i, "track_id"] = ""
    path = folder / "tracks.csv"
    table.to_csv(path, index=False)
    return path


def main(model_dir: str, n_rows: int = 2000, n_jobs: int = 2, source: str = "gtzan", batch_size: str = "auto",
         distinct: int = 48, cover_precision: str = "auto") -> dict:
    covers, audio = source_files(source, distinct)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs: dict[str, dict] = {}
    result = {
        "what": "scripts/score.py path (scoring.jobs.score_table, pipelined): fetch, decode covers, GTZAN features, "
                "cover network, audio model, fusion, write; caching off, every row's files under their own names; "
                "1 row in 20 broken on purpose; start-up (model load, feature workers) timed apart",
        "source": source, "distinct_files": len(audio), "n_rows": n_rows, "n_jobs": n_jobs, "device": device,
        "cover_precision": cover_precision, "runs": runs, "complete": False,
        "command": f"python benchmarks/score_throughput.py MODEL_DIR {n_rows} {n_jobs} {source} {batch_size} {distinct}"
                   + (f" {cover_precision}" if cover_precision != "auto" else ""),
        "machine": machine_info(),
    }
    name = "score_throughput" + ("_cuda" if device == "cuda" else "") + ("_paired" if source == "paired" else "") \
        + ("_bf16" if cover_precision == "bf16" and device != "cuda" else "")
    out = Path(__file__).resolve().parent / "results" / f"{name}.json"
    for model, folder in (("fused", Path(model_dir)), ("covers only", Path(model_dir) / "covers"),
                          ("audio only", Path(model_dir) / "audio")):
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            tracks = track_table(n_rows, scratch, covers, audio)
            start = time.perf_counter()
            # The job loads the model again: this times loading (and warms the file cache) apart from the job.
            if load_track_scorer(folder).audio_model is not None:
                start_workers(n_jobs)
            startup = time.perf_counter() - start
            summary = score_table(tracks, folder, scratch / "scores.csv", batch_size=batch_size, cache_dir=None,
                                  n_jobs=n_jobs, device="auto", progress=True, cover_precision=cover_precision)
            scores = pd.read_csv(scratch / "scores.csv", keep_default_na=False)
        runs[model] = {"model_dir": str(folder), "output_rows": len(scores), "startup_seconds": round(startup, 2),
                       "seconds": summary["seconds"], "seconds_to_first_batch": summary.get("seconds_to_first_batch"),
                       "tracks_per_s": summary["tracks_per_s"], "steady_tracks_per_s": summary.get("steady_tracks_per_s"),
                       "batch_size": summary["batch_size"], "stage_busy_share": summary["stage_busy_share"],
                       "statuses": scores["status"].where(scores["status"] == "ok", "not ok").value_counts().to_dict(),
                       "modalities": scores["modalities"].value_counts().to_dict()}
        print(model, json.dumps(runs[model]), flush=True)
        # Written after every model: a run stopped at a time limit (a lent machine's) keeps the ones finished.
        result["complete"] = len(runs) == 3
        write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return result


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(arguments[0], *(int(a) for a in arguments[1:3]), *arguments[3:5], *(int(a) for a in arguments[5:6]),
         *arguments[6:7])
