"""Batch scoring, local engine against Ray Data with 1 and 2 CPU workers: tracks/s on this machine.

Usage: .venv/bin/python benchmarks/ray_scoring.py MODEL_DIR [n_tracks]
MODEL_DIR is a main-job run folder (covers/, audio/, fusion/), scored fused. Each engine scores the
same table (score_throughput.py's: distinct covers and GTZAN clips, 1 row in 20 broken) through
scripts/score.py in a fresh process with cold caches. ``seconds`` is the scoring job's own time
(table planning to finished output, a local Ray instance's start included); ``wall_seconds`` adds
the process start. A shared machine's speed drifts (neighbours, throttling), so the run also times
the one-STFT GTZAN features of five clips before and after, one process then two at once: compare
those with benchmarks/results/feature_speed.json before comparing tracks/s across files. Writes
benchmarks/results/ray_scoring.json with the machine it ran on.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from audio.features import gtzan_features
from audio.io import load_audio
from data.gtzan import load_gtzan_audio
from data.root import resolve_data_root
from engine.io import write_json
from engine.run import machine_info
from score_throughput import track_table

ROOT = Path(__file__).resolve().parent.parent
ENGINES = {"local": ["engine=local", "n_jobs=1"],
           "local, 2 feature processes": ["engine=local", "n_jobs=2"],
           "ray, 1 CPU": ["engine=ray", "ray.num_cpus=1"],
           "ray, 2 CPUs": ["engine=ray", "ray.num_cpus=2"]}


def _score(model_dir: Path, tracks: Path, scratch: Path, engine: list[str]) -> dict:
    output = scratch / ("scores.parquet" if "engine=ray" in engine else "scores.csv")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "score.py"), f"model_dir={model_dir}",
                             f"input={tracks}", f"output={output}", "batch_size=16", "progress=false",
                             f"paths.cache_dir={scratch / 'cache'}", f"hydra.run.dir={scratch / 'run'}", *engine],
                            capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{engine} failed:\n{result.stderr[-3000:]}")
    summary = json.loads(result.stdout[result.stdout.rindex("\n{\n") + 1:result.stdout.rindex("}") + 1])
    scores = pd.read_parquet(output) if output.suffix == ".parquet" else pd.read_csv(output, keep_default_na=False)
    return {"seconds": summary["seconds"], "tracks_per_s": summary["tracks_per_s"], "wall_seconds": round(wall, 2),
            "output_rows": len(scores), "ok_rows": int((scores["status"] == "ok").sum())}


def _speed_probe() -> dict:
    """Seconds per clip of the one-STFT features on five GTZAN clips: in this process, and in two at once."""
    from concurrent.futures import ProcessPoolExecutor

    items = load_gtzan_audio(resolve_data_root() / "gtzan" / "audio").items
    paths = items[items["audio_path"].str.endswith(".ogg")]["audio_path"].head(5).tolist()
    clips = [load_audio(p).y for p in paths]
    gtzan_features(clips[0])  # compile the numba kernel outside the timing
    started = time.perf_counter()
    for y in clips:
        gtzan_features(y)
    one = (time.perf_counter() - started) / len(clips)
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(gtzan_features, clips[:2]))  # start and compile in both workers
        started = time.perf_counter()
        list(pool.map(gtzan_features, clips * 2))
        two = (time.perf_counter() - started) / (2 * len(clips))
    return {"one_stft_s_per_clip": round(one, 4), "one_stft_s_per_clip_two_processes": round(two, 4)}


def main(model_dir: str, n_tracks: int = 200) -> dict:
    model_dir = Path(model_dir).resolve()
    probes = {"before": _speed_probe()}
    print("speed probe", probes["before"], flush=True)
    runs = {}
    for name, engine in ENGINES.items():
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            runs[name] = _score(model_dir, track_table(n_tracks, scratch), scratch, engine)
        print(name, runs[name], flush=True)
    probes["after"] = _speed_probe()
    result = {"what": "scripts/score.py on a main-job run folder (fused), batch 16, cold caches, "
                      "1 row in 20 broken on purpose; Ray: a local instance of that many CPUs, one scoring actor",
              "model_dir": str(model_dir), "n_rows": n_tracks, "runs": runs, "speed_probe": probes,
              "command": f"python benchmarks/ray_scoring.py MODEL_DIR {n_tracks}", "machine": machine_info()}
    write_json(Path(__file__).resolve().parent / "results" / "ray_scoring.json", result)
    return result


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
