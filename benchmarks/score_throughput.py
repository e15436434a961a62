"""Batch-scoring throughput: tracks/s of scripts/score.py's path on shared covers + GTZAN audio.

Usage: .venv/bin/python benchmarks/score_throughput.py MODEL_DIR [n_tracks] [n_jobs]
MODEL_DIR is a main-job run folder (covers/, audio/, fusion/); it is timed whole (fused) and
branch by branch. Every track pairs a distinct
cover with a distinct GTZAN clip (cold caches: nothing computed before), and 1 row in 20 is
broken on purpose (missing file, corrupt image, empty row, unknown id). Writes
benchmarks/results/score_throughput.json with the machine it ran on.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from audio.extract import start_workers
from data.covers import load_covers_table
from data.gtzan import load_gtzan_audio
from data.root import resolve_data_root
from engine.io import write_json
from engine.run import machine_info
from scoring.jobs import score_table


def track_table(n_tracks: int, folder: Path) -> Path:
    root = resolve_data_root()
    covers = load_covers_table(root / "covers" / "covers.csv").items["cover_path"].drop_duplicates()
    audio = load_gtzan_audio(root / "gtzan" / "audio").items["audio_path"]
    if n_tracks > min(len(covers), len(audio)):
        raise ValueError(f"at most {min(len(covers), len(audio))} distinct tracks available")
    table = pd.DataFrame({"track_id": [f"bench-{i}" for i in range(n_tracks)],
                          "cover_path": covers.sample(n_tracks, random_state=0).to_numpy(),
                          "audio_path": audio.sample(n_tracks, random_state=0).to_numpy()})
    (folder / "corrupt.jpg").write_text("not an image")
    broken = {0: ("", str(folder / "missing.ogg")), 1: (str(folder / "corrupt.jpg"), ""), 2: ("", ""), 3: ("", "")}
    for i in range(0, n_tracks, 20):
        kind = (i // 20) % 4
        table.loc[i, ["cover_path", "audio_path"]] = broken[kind]
        if kind == 3:
            table.loc[i, "track_id"] = "unknown-id"
        elif kind == 2:
            table.loc[i, "track_id"] = ""
    path = folder / "tracks.csv"
    table.to_csv(path, index=False)
    return path


def main(model_dir: str, n_tracks: int = 200, n_jobs: int = 2) -> dict:
    """Time the whole run folder (fused) and each branch alone, each with cold caches.

    The feature workers are started before the timing, as a long scoring job starts them once.
    """
    start_workers(n_jobs)
    runs = {}
    for name, folder in (("fused", Path(model_dir)), ("covers only", Path(model_dir) / "covers"),
                         ("audio only", Path(model_dir) / "audio")):
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            tracks = track_table(n_tracks, scratch)
            summary = score_table(tracks, folder, scratch / "scores.csv", batch_size=64, cache_dir=scratch / "cache",
                                  n_jobs=n_jobs, progress=True)
            scores = pd.read_csv(scratch / "scores.csv", keep_default_na=False)
        runs[name] = {"model_dir": str(folder), "output_rows": len(scores), "seconds": summary["seconds"],
                      "tracks_per_s": summary["tracks_per_s"],
                      "statuses": scores["status"].where(scores["status"] == "ok", "not ok").value_counts().to_dict(),
                      "modalities": scores["modalities"].value_counts().to_dict()}
    result = {
        "what": "scripts/score.py path (scoring.jobs.score_table): decode + embed covers, extract GTZAN features, "
                "fuse; cold caches; batch 64; 1 row in 20 broken on purpose; feature workers started before timing",
        "n_rows": n_tracks, "n_jobs": n_jobs, "runs": runs,
        "command": f"python benchmarks/score_throughput.py MODEL_DIR {n_tracks} {n_jobs}", "machine": machine_info(),
    }
    out = Path(__file__).resolve().parent / "results" / "score_throughput.json"
    write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
