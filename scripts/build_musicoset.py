"""Build the MusicOSet album item table (labelled by the genre map) and report how it was built.

Usage: .venv/bin/python scripts/build_musicoset.py [--data-root DIR] [--genre-map CSV] [--out DIR]

Writes ``items.csv`` (common schema, cover URLs / album ids to crawl), ``unmapped_genres.csv``
(fine genres the map lacks, by frequency), ``unlabelled_albums.csv``, ``row_problems.csv``
(repaired and dropped table rows) and ``build_report.json`` (albums per class for the paper's
3/4/5-class sets, repair/drop counts).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from acquire.musicoset import build_musicoset_items
from data.labels import LABEL_SETS
from data.musicoset import GENRE_MAP, load_genre_map
from data.root import resolve_data_root
from engine.cli import report_user_errors


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder holding musicoset/ (default: $GENREFUSION_DATA or ../shared/datasets)")
    parser.add_argument("--genre-map", type=Path, default=GENRE_MAP)
    parser.add_argument("--out", type=Path, default=Path("artifacts/musicoset"))
    args = parser.parse_args(argv)
    build = build_musicoset_items(resolve_data_root(args.data_root) / "musicoset", load_genre_map(args.genre_map))
    args.out.mkdir(parents=True, exist_ok=True)
    build.items.to_csv(args.out / "items.csv", index=False)
    build.unmapped_genres.to_csv(args.out / "unmapped_genres.csv", index=False)
    build.unlabelled.to_csv(args.out / "unlabelled_albums.csv", index=False)
    build.problems.to_csv(args.out / "row_problems.csv", index=False)
    reasons = build.problems["reason"]
    report = {
        "albums_labelled": len(build.items),
        "albums_per_class": build.items["label"].value_counts().to_dict(),
        "label_sets": build.counts({name: list(LABEL_SETS[name].classes) for name in ("paper3", "paper4", "paper5")}),
        "rows_repaired": int(reasons.str.startswith("repaired").sum()),
        "rows_dropped": int(reasons.str.startswith("malformed row").sum()),
        "other_problems": int((~reasons.str.startswith(("repaired", "malformed row"))).sum()),
        "albums_unlabelled": build.unlabelled["reason"].str.replace(r" between .*", "", regex=True).value_counts().to_dict(),
        "unmapped_genres": len(build.unmapped_genres),
        "genre_map": str(args.genre_map),
    }
    (args.out / "build_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print("Top unmapped genres (albums, artists):")
    print(build.unmapped_genres.head(15).to_string(index=False))
    print(f"Written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
