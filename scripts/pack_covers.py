"""Pack the covers and splits of the paper table for a machine without the datasets.

Usage: genrefusion pack-covers --out DIR [--labels paper3 paper4 paper5] [--protocols random group]
           [--backbone efficientnet_lite2 | --size PX] [--format webp|jpeg] [--quality 75] [-- overrides ...]
Every cover the table's rows read, resized once to the backbone's input size and re-encoded, the covers
table cut to them, and the table's saved splits (made first where missing), in one folder with a
manifest of digests; checked to give the same items and split parts as the data. Carry the folder and
run `genrefusion reproduce-covers --pack DIR ...` there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from covers.backbones import create_backbone
from covers.pack import IMAGE_FORMATS, build_cover_pack, pack_digest
from covers.reproduce import cell_overrides
from engine.cli import report_user_errors


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the pack")
    parser.add_argument("--labels", nargs="+", default=["paper3", "paper4", "paper5"])
    parser.add_argument("--protocols", nargs="+", default=["random", "group"])
    parser.add_argument("--backbone", default="efficientnet_lite2", help="the covers are stored at its input size")
    parser.add_argument("--size", type=int, default=None, help="store at this side instead (pixels)")
    parser.add_argument("--format", default="webp", choices=sorted(IMAGE_FORMATS))
    parser.add_argument("--quality", type=int, default=75)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every cell (after --)")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error("--quality must be in 1…100")
    size = args.size or create_backbone(args.backbone, pretrained=False)[1].input_size
    cells = [(f"{label_set}-{protocol}", cell_overrides(label_set, protocol, args.overrides))
             for label_set in args.labels for protocol in args.protocols]
    manifest = build_cover_pack(args.out, cells, size, args.format, args.quality)
    print(f"{manifest['covers']} covers ({args.format} at {size} px, quality {args.quality}) and "
          f"{sum(name.startswith('splits/') for name in manifest['files']) // 2} splits, "
          f"{manifest['bytes'] / 2**20:.1f} MiB, digest {pack_digest(manifest)[:12]}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
