"""Reproduce the covers-only paper table on a covers table, beside the paper's numbers.

Usage: genrefusion reproduce-covers [--labels paper3 paper4 paper5] [--protocols random group]
           [--mode frozen|finetune] [--backbone efficientnet_lite0] [--parallel N] [--pack DIR]
           [--out DIR] [-- overrides ...]
Default mode is frozen (the CPU mode); on a GPU use --mode finetune --backbone resnet50
(with covers.model.weights_path=...) or efficientnet_lite2, and --parallel to train several rows at
once on the one GPU. --pack reads the covers and splits from a pack (genrefusion pack-covers), on a
machine without the datasets. Writes table.md and results.json. Run it again with the same --out after
an interruption or a failure: rows finished with the same config are reused, an interrupted fine-tune
continues from its last epoch. The exit status is 1 when a row failed (the others are in the table).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from covers.backbones import create_backbone
from covers.pack import pack_digest, pack_overrides, verify_cover_pack
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
    parser.add_argument("--parallel", type=int, default=1, help="rows trained at once, each in its own process")
    parser.add_argument("--pack", type=Path, default=None, help="a cover pack to read covers and splits from")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run (after --)")
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    out = args.out or Path("outputs") / "reproduce" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out = out.resolve()
    overrides, pack = list(args.overrides), None
    if args.pack:
        _, info = create_backbone(args.backbone, pretrained=False)
        pack = verify_cover_pack(args.pack, size=info.input_size)
        overrides = [*pack_overrides(args.pack), *overrides]
    command = " ".join(["genrefusion reproduce-covers", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    machine = machine_info()

    def write_table(results: pd.DataFrame, complete: bool) -> str:
        """table.md and results.json of the rows so far (after every row, so a stopped call leaves them)."""
        seconds = round(time.perf_counter() - started, 1)
        reused = int(results["reused"].eq(True).sum()) if "reused" in results.columns else 0
        made = int(results["reused"].notna().sum()) if "reused" in results.columns else 0
        # The table says how it was made, so it stands on its own when copied out of the run folder.
        table = format_table(results, args.mode, args.backbone) + (
            f"\n\nThis call: `{command}` ({seconds} s{'' if complete else ', still running or stopped'}; {reused} of "
            f"{made} rows reused from an earlier call)  \n"
            f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, GPU: {machine['gpu'] or 'none'}, "
            f"torch {machine['versions']['torch']}, commit {machine['git_commit']}"
            + (f"  \nCovers and splits from the pack {args.pack} (digest {pack_digest(pack)[:12]}, "
               f"{pack['image_format']} at {pack['size']} px)" if pack else ""))
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table + "\n")
        write_json(out / "results.json", {"rows": results.to_dict(orient="records"), "machine": machine,
                                          "command": command, "seconds": seconds, "complete": complete,
                                          "pack": {"digest": pack_digest(pack), "size": pack["size"],
                                                   "image_format": pack["image_format"]} if pack else None})
        return table

    results = reproduce(out, args.labels, args.protocols, args.mode, args.backbone, overrides, args.parallel, command,
                        on_row=lambda so_far: write_table(so_far, complete=False))
    table = write_table(results, complete=True)
    print(table + f"\n\nRun folders and table: {out}")
    failed = int(results["failed"].eq(True).sum()) if "failed" in results.columns else 0
    if failed:
        print(f"error: {failed} row(s) failed (their errors are in the table); run the same command again to "
              "retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
