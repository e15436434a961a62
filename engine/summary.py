"""Printed result tables."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.io import write_json
from engine.report import HEADLINE, headline

#: Column titles of the headline metrics in printed tables.
TITLES = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1"}


def results_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per model, headline metrics with their 95% bootstrap intervals."""
    lines = ["| model | n | " + " | ".join(TITLES[k] for k in HEADLINE) + " |", "|---|---|" + "---|" * len(HEADLINE)]
    for name, m in rows.items():
        cells = [f"{m[k]:.3f} [{m['ci95'][k][0]:.3f}, {m['ci95'][k][1]:.3f}]" for k in HEADLINE]
        lines.append(f"| {name} | {m['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_results(rows: dict[str, dict[str, Any]], run_dir: Path, figures: list[Path] | None = None,
                  selections: Path | None = None) -> None:
    """Print the table and write it as ``results.md`` and ``results.json`` (what sweep summaries read);
    ``selections``: the run's list of models chosen on validation, named after the figures."""
    table = results_table(rows)
    (run_dir / "results.md").write_text(table + "\n")
    write_json(run_dir / "results.json", {name: {**headline(m), "val_accuracy": m.get("training", {}).get("val_acc"),
                                                 "pairing": m.get("pairing")} for name, m in rows.items()})
    listed = "".join(f"\n  {path}" for path in figures or [])
    print("\n" + table + "\n\n(95% bootstrap intervals in brackets)" + (f"\nFigures:{listed}" if listed else "")
          + (f"\nModels chosen on validation: {selections}" if selections else "") + "\nRun folder: " + str(run_dir))
