"""The README's speed figures, rendered from the benchmark result files (never typed by hand).

Usage: .venv/bin/python benchmarks/readme_numbers.py   (rewrites the block between the markers
in README.md; ``tests/test_readme_numbers.py`` fails when the README and the result files disagree)
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- speed figures: start (benchmarks/readme_numbers.py) -->", "<!-- speed figures: end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(result: dict) -> str:
    machine = result["machine"]
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    return f"{machine['cpu']}, {machine['cpu_cores']} cores{gpu}; commit {machine['git_commit']}"


def _note(result: dict) -> list[str]:
    """A result file's note (what to compare it with), as a paragraph after its table."""
    return ["", result["note"], ""] if result.get("note") else [""]


def render() -> str:
    """The markdown block for the README: one table per benchmark whose result file exists."""
    lines = [START, ""]
    # The 2-core record, then a GPU machine's (its CPU paths ran on that machine's cores).
    for name in ("feature_speed.json", "feature_speed_cuda.json"):
        if not (features := _load(name)):
            continue
        lines += [f"**GTZAN features** (`{features['command']}`; {features['clips']} clips of 30 s; "
                  f"{_machine(features)}):", "",
                  "| path | s per clip | × naive |", "|---|---|---|"]
        speedups = features["speedup_vs_naive"]
        for path, seconds in features["seconds_per_clip"].items():
            lines.append(f"| {path.replace('_', ' ')} | {seconds} | {speedups.get(path, 1.0)} |")
        if cuda := features.get("cuda"):
            lines.append(f"| torch, {cuda['device']}, batch {cuda['batch']}, decoding included | "
                         f"{cuda['seconds_per_clip_incl_decode']} | {cuda['speedup_vs_naive_incl_decode']} |")
        agreement = dict(features["agreement_with_one_stft_reference"])
        if cuda:
            agreement["torch_cuda"] = cuda["agreement_with_one_stft_reference"]
        lines += ["", "Largest relative difference from the one-STFT reference, tempo aside (tempos differing): "
                  + "; ".join(f"{path.replace('_', ' ')} {a['max_relative_difference']:.1e} ({a['tempos_differing']})"
                              for path, a in agreement.items()) + ".", *_note(features)]
    for name in ("score_throughput.json", "score_throughput_paired.json", "score_throughput_cuda.json",
                 "score_throughput_cuda_paired.json"):
        if not (scoring := _load(name)):
            continue
        lines += [f"**Batch scoring, steady state** (`{scoring['command']}`; {scoring['n_rows']} rows tiled from "
                  f"{scoring['distinct_files']} {scoring['source']} clips and covers, caching off, "
                  f"{scoring['n_jobs']} feature processes; {_machine(scoring)}):", "",
                  "| model | batch | start-up s | s to first batch | steady tracks/s | job tracks/s | busiest stages "
                  "(share of the job's time) | output rows |", "|---|---|---|---|---|---|---|---|"]
        for model, run in scoring["runs"].items():
            busiest = sorted(run["stage_busy_share"].items(), key=lambda item: -item[1])[:2]
            lines.append(f"| {model} | {run['batch_size']} | {run['startup_seconds']} | {run['seconds_to_first_batch']} "
                         f"| {run['steady_tracks_per_s']} | {run['tracks_per_s']} | "
                         + ", ".join(f"{stage} {share:.0%}" for stage, share in busiest)
                         + f" | {run['output_rows']} |")
        lines += _note(scoring)
    if ray := _load("ray_scoring.json"):
        lines += [f"**Scoring engines, local and Ray** (`{ray['command']}`; {ray['n_rows']} rows; {_machine(ray)}):", "",
                  "| engine | tracks/s | output rows | hours per million tracks, one node |", "|---|---|---|---|"]
        for name, run in ray["runs"].items():
            hours = 1e6 / run["tracks_per_s"] / 3600
            lines.append(f"| {name} | {run['tracks_per_s']} | {run['output_rows']} | {hours:.0f} |")
        lines.append("")
    for device in ("cpu", "cuda"):
        if finetune := _load(f"finetune_speed_{device}.json"):
            lines += [f"**Cover fine-tuning, {device.upper()}** (`{finetune['command']}`; {finetune['size']} px, "
                      f"batch {finetune['batch_size']}, random init, epoch {finetune['epoch_reported']}; "
                      f"{_machine(finetune)}):", "",
                      "| backbone | variant | images/s | data-wait share |", "|---|---|---|---|"]
            for backbone, variants in finetune["runs"].items():
                for variant, run in variants.items():
                    lines.append(f"| {backbone} | {variant.replace('_', ' ')} | {run['images_per_s']} | "
                                 f"{run['data_wait_share']:.1%} |")
            if finetune.get("complete") is False:
                lines += ["", "(Incomplete: the run ended before every backbone was measured.)"]
            if finetune.get("note"):
                lines += ["", finetune["note"] + "."]
            lines.append("")
    return "\n".join([*lines, END])


def update_readme(readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no speed-figures markers ({START!r} … {END!r})")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    readme.write_text(before + render() + after)


if __name__ == "__main__":
    update_readme()
