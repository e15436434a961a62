"""The measured tables of docs/ and the README, rendered from the result files (never typed by hand).

A page marks a rendered block with ``<!-- rendered: KIND ARGUMENT -->`` … ``<!-- end rendered -->``; the
block between the markers is what :func:`render` makes of the files the argument names:

- ``comparison results/<folder>``: a run's image / audio / fused comparison (``metrics_pairing-*.json``);
- ``include results/<file>.md``: a table a command wrote as markdown (sweep summaries, the covers table);
- ``paired results/<file>.json …``: paired comparisons written by ``genrefusion compare --out``;
- ``runs results/<folder> …``: one branch run per folder (its ``metrics.json``): test accuracy, macro-F1;
- ``covers-tables results/<frozen table> results/<fine-tuned table>``: two runs of the paper table
  (``genrefusion reproduce-covers``) side by side, each row's paired difference on its common test items
  (the rows' committed ``predictions.csv``); a table not run yet shows as such;
- ``speed``: the benchmark result files under ``benchmarks/results/`` (each with its machine and commit).

Usage: .venv/bin/python docs/render.py              rewrite every page's blocks
       .venv/bin/python docs/render.py --check      exit 1 and name the pages whose blocks disagree
       .venv/bin/python docs/render.py --inventory OLD.md   every measured table of OLD.md: are its
                                                    numbers still in the README and docs/?
``tests/test_docs.py`` fails when a page disagrees with its files.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: The pages the renderer keeps: the README and every page of docs/.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- rendered: (?P<spec>[^>]+?) -->\n)(?P<body>.*?)(<!-- end rendered -->)", re.S)


def _interval(values: list[float] | None, signed: bool = False) -> str:
    if not values:
        return "–"
    form = "{:+.3f}" if signed else "{:.3f}"
    return f"[{form.format(values[0])}, {form.format(values[1])}]"


def comparison(folder: str) -> str:
    """One row per model of a run's comparison: accuracy with its interval (and the one resampling groups
    where the items have groups), balanced accuracy, log-loss / ECE."""
    [path] = sorted((ROOT / folder).glob("metrics_pairing-*.json"))
    metrics = json.loads(path.read_text())
    grouped = any(row.get("ci95_by_group") for row in metrics["rows"].values())
    lines = [f"| model (same {metrics['comparison_items']} items, pairing: {metrics['pairing']}) | accuracy "
             + ("| by group " if grouped else "") + "| balanced acc. | macro-F1 | log-loss / ECE |",
             "|---|---|" + ("---|" if grouped else "") + "---|---|---|"]
    for name, row in metrics["rows"].items():
        model = name.split(" · pairing:")[0]
        calibration = f"{row['log_loss']:.3f} / {row['ece']:.3f}" if row.get("log_loss") is not None else "–"
        by_group = f"| {_interval((row.get('ci95_by_group') or {}).get('accuracy'))} " if grouped else ""
        lines.append(f"| {model} | {row['accuracy']:.3f} {_interval(row['ci95']['accuracy'])} {by_group}"
                     f"| {row['balanced_accuracy']:.3f} | {row['macro_f1']:.3f} | {calibration} |")
    return "\n".join(lines) + f"\n\n(`{folder}/{path.name}`)"


def include(file: str) -> str:
    """The markdown tables of a file a command wrote (its other lines left out)."""
    lines = [line for line in (ROOT / file).read_text().splitlines() if line.startswith("|")]
    return "\n".join(lines) + f"\n\n(`{file}`)"


def paired(*files: str) -> str:
    """Paired comparisons (``genrefusion compare --out``): each run's accuracy, the first minus each other."""
    lines = ["| comparison file | common test items | first run | other run | first − other [95% CI] | McNemar p |",
             "|---|---|---|---|---|---|"]
    for file in files:
        result = json.loads((ROOT / file).read_text())
        runs = result["runs"]
        first = next(iter(runs))
        for other, versus in result["first_minus_other"].items():
            difference = versus["difference"]
            lines.append(f"| `{Path(file).name}` | {result['n_common_test_items']} | {runs[first]['accuracy']:.3f} | "
                         f"{runs[other]['accuracy']:.3f} | {difference['difference']:+.3f} "
                         f"{_interval(difference['ci95'], signed=True)} | {versus['mcnemar']['p_value']:.4f} |")
    return "\n".join(lines)


def runs(*folders: str) -> str:
    """One row per branch run folder: its model, labels, split, test items, accuracy with its interval, macro-F1."""
    lines = ["| run folder | model | classes | split | n | accuracy [95% CI] | macro-F1 |", "|---|---|---|---|---|---|---|"]
    for folder in folders:
        metrics = json.loads((ROOT / folder / "metrics.json").read_text())
        lines.append(f"| `{folder}` | {metrics['model']} | {len(metrics['labels'])} | {metrics['protocol']} | "
                     f"{metrics['n']} | {metrics['accuracy']:.3f} {_interval(metrics['ci95']['accuracy'])} | "
                     f"{metrics['macro_f1']:.3f} |")
    return "\n".join(lines)


def _table(folder: str) -> tuple[dict | None, dict[tuple[str, str, str], dict]]:
    """A paper table's ``results.json`` and its model rows by (labels, protocol, model); ``None`` if not run."""
    path = ROOT / folder / "results.json"
    if not path.is_file():
        return None, {}
    result = json.loads(path.read_text())
    return result, {(r["labels"], r["protocol"], r["model"]): r for r in result["rows"] if r["model"] != "confound"}


def _score(row: dict | None) -> str:
    if row is None:
        return "not run yet"
    if row.get("accuracy") is None:
        return row.get("note") or "–"
    return f"{row['accuracy']:.3f} {_interval(row['ci95'])}"


def _paired(run_a: Path, run_b: Path) -> tuple[str, str]:
    """``a − b`` [95% CI] and McNemar's p of two run folders, or dashes where either has no predictions."""
    from engine.predictions import compare_runs, predictions_file

    if not all(predictions_file(run).is_file() for run in (run_a, run_b)):
        return "–", "–"
    versus = compare_runs([run_a, run_b])["first_minus_other"][str(run_b)]
    difference = versus["difference"]
    return (f"{difference['difference']:+.3f} {_interval(difference['ci95'], signed=True)}",
            f"{versus['mcnemar']['p_value']:.3f}")


def covers_tables(frozen: str, finetuned: str) -> str:
    """The paper table frozen and fine-tuned, side by side, with each row's paired difference, then what
    M5's augmentation does over M4 under fine-tuning."""
    frozen_result, frozen_rows = _table(frozen)
    tuned_result, tuned_rows = _table(finetuned)

    def run(folder: str, labels: str, protocol: str, model: str) -> Path:
        return ROOT / folder / f"{labels}-{protocol}" / model

    lines = ["| labels | protocol | model | paper | frozen [95% CI] | fine-tuned [95% CI] | fine-tuned − frozen "
             "[95% CI] | McNemar p |", "|---|---|---|---|---|---|---|---|"]
    for key, row in frozen_rows.items():
        paper = f"{row['paper']:.2%}" if row.get("paper") is not None else ""
        difference, p_value = _paired(run(finetuned, *key), run(frozen, *key)) if key in tuned_rows else ("–", "–")
        lines.append(f"| {' | '.join(key)} | {paper} | {_score(row)} | {_score(tuned_rows.get(key))} | "
                     f"{difference} | {p_value} |")
    lines += ["", f"Frozen: `{frozen}` (`{frozen_result['command']}`). Fine-tuned: "
              + (f"`{finetuned}` (`{tuned_result['command']}`"
                 + (", stopped before every row was finished" if tuned_result.get("complete") is False else "") + ")."
                 if tuned_result else f"`{finetuned}`, not run yet (it needs a GPU machine).")]
    m5_rows = [key for key in tuned_rows if key[2] == "M5"]
    if m5_rows:
        lines += ["", "| labels | protocol | M5 − M4, fine-tuned [95% CI] | McNemar p |", "|---|---|---|---|"]
        for labels, protocol, _ in m5_rows:
            difference, p_value = _paired(run(finetuned, labels, protocol, "M5"), run(finetuned, labels, protocol, "M4"))
            lines.append(f"| {labels} | {protocol} | {difference} | {p_value} |")
    return "\n".join(lines)


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


def speed() -> str:
    """One table per benchmark whose result file exists."""
    lines: list[str] = []
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
    for name in ("score_throughput.json", "score_throughput_bf16.json", "score_throughput_paired.json",
                 "score_throughput_cuda.json", "score_throughput_cuda_paired.json"):
        if not (scoring := _load(name)):
            continue
        precision = f", cover network in {scoring['cover_precision']}" if scoring.get("cover_precision", "auto") != "auto" \
            else ""
        lines += [f"**Batch scoring, steady state{precision}** (`{scoring['command']}`; {scoring['n_rows']} rows tiled from "
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
        if scoring.get("complete") is False:
            lines += ["", "(Incomplete: the run ended before every model was measured.)"]
        lines += _note(scoring)
    if passes := _load("image_pass_speed.json"):
        sizes = [str(size) for size in passes["pass_sizes"]]
        lines += [f"**Cover network per forward pass on the CPU** (`{passes['command']}`; {passes['covers']} real covers, "
                  f"{passes['precision']}, {passes['memory_format'].replace('_', ' ')}, median of {passes['rounds']} "
                  f"rounds; {_machine(passes)}): ms per cover by covers per pass, and what scoring runs "
                  f"(`predict_proba`, passes of {passes['cpu_image_batch']}):", "",
                  "| backbone | threads | " + " | ".join(sizes) + " | scoring's path |",
                  "|---|---|" + "---|" * (len(sizes) + 1)]
        for backbone, run in passes["backbones"].items():
            for threads, timing in run["threads"].items():
                by_size = timing["ms_per_cover_by_pass_size"]
                lines.append(f"| {backbone} ({run['input_size']} px) | {threads} | "
                             + " | ".join(str(by_size[size]) for size in sizes)
                             + f" | {timing['predict_proba_ms_per_cover']} |")
        largest = max(diff for run in passes["backbones"].values()
                      for diff in run["max_probability_difference_from_one_pass"].values())
        lines += ["", f"Probabilities of every pass size within {largest:.1e} of one pass of all covers.", *_note(passes)]
        if passes.get("complete") is False:
            lines += ["(Incomplete: the run ended before every backbone was measured.)", ""]
    if median := _load("median_kernel.json"):
        lines += [f"**HPSS median filters** (`{median['command']}`; {median['clips']} GTZAN clips, "
                  f"{median['width']} wide along time and along frequency of a {median['spectrogram_shape'][0]} × "
                  f"{median['spectrogram_shape'][1]} magnitude, one thread, median of {median['rounds']} rounds; "
                  f"{_machine(median)}; vector extensions {', '.join(median['cpu_vector_extensions'])}):", "",
                  "| kernel | ms per clip | equal to scipy |", "|---|---|---|"]
        for kernel, ms in median["ms_per_clip_both_directions"].items():
            equal = median["equal_to_scipy"].get(kernel)
            lines.append(f"| {kernel} | {ms} | {'(the reference)' if equal is None else 'yes' if equal else 'NO'} |")
        lines += _note(median)
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
    return "\n".join(lines).strip()


RENDERERS = {"comparison": comparison, "include": include, "paired": paired, "runs": runs, "speed": speed,
             "covers-tables": covers_tables}


def render(spec: str) -> str:
    """The block for one marker's ``KIND ARGUMENT…``."""
    kind, *arguments = spec.split()
    if kind not in RENDERERS:
        raise ValueError(f"unknown rendered block {kind!r}; known: {sorted(RENDERERS)}")
    return RENDERERS[kind](*arguments)


def rendered_page(text: str) -> str:
    """``text`` with every block rendered afresh."""
    return BLOCK.sub(lambda m: f"{m.group(1)}\n{render(m.group('spec'))}\n\n{m.group(4)}", text)


def stale_pages(pages: list[Path] = PAGES) -> list[Path]:
    """The pages whose rendered blocks disagree with their files."""
    return [page for page in pages if rendered_page(page.read_text()) != page.read_text()]


def _tables(text: str) -> list[list[str]]:
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def inventory(old: str, pages: list[Path] = PAGES) -> list[str]:
    """For each table of ``old`` with measured numbers: how many of its numbers the pages still hold."""
    now = "\n".join(page.read_text() for page in pages)
    kept = set(re.findall(r"\d+\.\d+", now))
    report = []
    for table in _tables(old):
        numbers = re.findall(r"\d+\.\d+", "\n".join(table[2:]))
        if numbers:
            missing = sorted({n for n in numbers if n not in kept})
            report.append(f"{'kept' if not missing else 'MISSING ' + ', '.join(missing)}: {table[0][:90]}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which pages disagree with their files")
    parser.add_argument("--inventory", type=Path, help="an earlier README: list its measured tables")
    args = parser.parse_args()
    if args.inventory:
        lines = inventory(args.inventory.read_text())
        print("\n".join(lines))
        return int(any(line.startswith("MISSING") for line in lines))
    if args.check:
        stale = stale_pages()
        print("\n".join(f"stale: {page.relative_to(ROOT)}" for page in stale) or "every page agrees with its files")
        return int(bool(stale))
    for page in PAGES:
        page.write_text(rendered_page(page.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
