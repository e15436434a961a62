"""Reproduce the covers-only paper table on a covers table, beside the paper's numbers.

Usage: .venv/bin/python scripts/reproduce_covers.py [--labels paper3 paper4 paper5]
           [--protocols random group] [--mode frozen|finetune] [--backbone efficientnet_lite0] [-- overrides ...]
Default mode is frozen (the CPU mode); on a GPU use --mode finetune --backbone resnet50
(with covers.model.weights_path=...) or efficientnet_lite2. Writes table.md and results.json.
Run it again with the same --out after an interruption or a failure: rows finished with the same
config are reused, an interrupted fine-tune continues from its last epoch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from covers.reproduce import format_table, reproduce
from engine.cli import report_user_errors
from engine.io import write_json
from engine.run import machine_info


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", nargs="+", default=["paper3", "paper4", "paper5"])
    parser.add_argument("--protocols", nargs="+", default=["random", "group"])
    parser.add_argument("--mode", default="frozen", choices=["frozen", "finetune"])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run (after --)")
    args = parser.parse_args(argv)
    out = args.out or Path("outputs") / "reproduce" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out = out.resolve()
    started = time.perf_counter()
    results = reproduce(out, args.labels, args.protocols, args.mode, args.backbone, args.overrides)
    seconds = round(time.perf_counter() - started, 1)
    command = " ".join([".venv/bin/python scripts/reproduce_covers.py", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_info()
    # The table says how it was made, so it stands on its own when copied out of the run folder.
    table = format_table(results, args.mode, args.backbone) + (
        f"\n\nCommand: `{command}` ({seconds} s; {int(results['reused'].sum())} of {int(results['reused'].notna().sum())} "
        "rows reused from an earlier call)  \n"
        f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, GPU: {machine['gpu'] or 'none'}, "
        f"torch {machine['versions']['torch']}, commit {machine['git_commit']}")
    (out / "table.md").write_text(table + "\n")
    write_json(out / "results.json", {"rows": results.to_dict(orient="records"), "machine": machine,
                                      "command": command, "seconds": seconds})
    print(table + f"\n\nRun folders and table: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
