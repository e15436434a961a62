"""A compact carry of the paper table's covers: one folder that stands in for the data root on a machine
without the datasets (a lent GPU machine takes at most 64 MiB of files a command).

It holds every cover the table's rows read, decoded once (:func:`covers.images.load_cover`: EXIF, CMYK,
alpha handled) at the training size and re-encoded (WebP at quality 75 by default: the 4,354 covers of
the 5-class table at 260 px take ~34 MiB, which leaves room in a 64 MiB carry for EfficientNet-Lite2's
22 MiB of weights; ~52 MiB at quality 85, JPEG ~65) under its original relative path with the format's
suffix (an item's id is its path without suffix, so ids do not change), the covers table cut to those
rows (original columns, ``md5`` the original file's, so items, duplicates and groups stay the full
table's; ``file_md5`` the packed file's, which the cover cache keys on), the saved splits
of every (label set, protocol) of the table, and ``manifest.json`` with every file's SHA-256. Building
checks that each cell's items and split from the pack equal those from the full data;
:func:`verify_cover_pack` checks the digests before a table is run from it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, features

from covers.images import CoverError, load_cover
from data.config import compose_config, prepare_from_config
from data.covers import resolve_base_dir
from data.items import file_digest, read_delimited
from data.prepare import PreparedData
from data.root import ENV_VAR, resolve_data_root
from engine.io import write_json

MANIFEST = "manifest.json"
#: Where the covers table sits inside a data root (and so inside a pack).
COVERS_CSV = Path("covers") / "covers.csv"
PACK_FORMAT = 1
#: Image formats a pack may store, with their file suffix.
IMAGE_FORMATS = {"webp": ".webp", "jpeg": ".jpg"}


class CoverPackError(ValueError):
    """A pack that is incomplete, altered, or does not match what is asked of it."""


def pack_overrides(pack_dir: str | Path) -> list[str]:
    """The overrides that make a run read its data and splits from the pack.

    Refused while ``$GENREFUSION_DATA`` is set: it comes before ``paths.data_root``, so the run would
    read the full data while its table said the pack."""
    if os.environ.get(ENV_VAR):
        raise CoverPackError(f"${ENV_VAR} is set ({os.environ[ENV_VAR]}) and would be read instead of the pack: "
                             "unset it to run from a pack")
    pack_dir = Path(pack_dir).resolve()
    return [f"paths.data_root={pack_dir}", f"paths.splits_dir={pack_dir / 'splits'}"]


def build_cover_pack(out_dir: str | Path, cells: Sequence[tuple[str, list[str]]], size: int,
                     image_format: str = "webp", quality: int = 75) -> dict[str, Any]:
    """Write the pack for ``cells`` (each a name and the overrides that compose its run, e.g. one row of the
    paper table) to ``out_dir`` and return its manifest.

    ``size``: the side the covers are stored at (the backbone's input size); ``image_format``: a key of
    :data:`IMAGE_FORMATS`. ``out_dir`` must not exist; the pack is built beside it and moved into place
    once checked, so an interrupted build leaves none.
    """
    if image_format not in IMAGE_FORMATS:
        raise CoverPackError(f"image format {image_format!r}: one of {sorted(IMAGE_FORMATS)}")
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        raise CoverPackError(f"{out_dir} exists: give a new folder (a pack is never written over)")
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    scratch = partial / "scratch"
    originals: dict[str, pd.DataFrame] = {}
    split_files: set[Path] = set()
    data_root, csv_path = None, None
    for name, overrides in cells:
        cfg = compose_config(overrides)
        prepared = prepare_from_config(cfg, cfg.covers, scratch / name)
        originals[name] = _cell_table(prepared)
        split_files |= {prepared.split_path, prepared.split_path.with_suffix(".json")}
        root, table = resolve_data_root(cfg.paths.data_root), Path(cfg.covers.data.loader.csv_path)
        if (data_root, csv_path) not in ((None, None), (root, table)):
            raise CoverPackError(f"the cells read different covers tables ({csv_path}, {table}): one pack holds one")
        data_root, csv_path = root, table
        if table.resolve() != (root / COVERS_CSV).resolve():
            raise CoverPackError(f"{table} is not the data root's {COVERS_CSV}: a pack stands in for a data root")
    header, rows, _ = read_delimited(csv_path)
    table = pd.DataFrame(rows, columns=header).fillna("")
    if "md5" not in table.columns:
        table["md5"] = ""
    # Relative paths are read from where the loader reads them (the table's folder or the one above it),
    # and the pack keeps that layout. The loader digests a file whose row gives no md5; so does the pack.
    base = resolve_base_dir(csv_path, table["path"].tolist())
    unlisted = table["md5"].str.strip() == ""
    table.loc[unlisted, "md5"] = [file_digest(base / p) if (base / p).is_file() else ""
                                  for p in table.loc[unlisted, "path"]]
    kept_md5 = set().union(*(set(items["md5"]) for items in originals.values()))
    # Every row of a kept cover's md5: the copies and same-image rows of other genres are what the
    # label set's duplicate and ambiguity rules read, so the pack keeps the same items.
    # A listed file that is missing is left out of the pack, as the loader leaves out its row.
    present = np.array([(base / p).is_file() for p in table["path"]], dtype=bool)
    table = table[table["md5"].isin(kept_md5).to_numpy() & present].reset_index(drop=True)
    absolute = [p for p in table["path"] if Path(p).is_absolute()]
    if absolute:
        raise CoverPackError(f"{csv_path} lists {len(absolute)} covers by absolute path (e.g. {absolute[0]}): "
                             "a pack keeps each cover's path relative to the data root")
    packed_paths, file_md5 = [], []
    for relative in table["path"]:
        data, suffix = _packed_bytes(base / relative, size, image_format, quality)
        packed = Path(relative).with_suffix(suffix)
        target = partial / base.relative_to(data_root) / packed
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        packed_paths.append(str(packed))
        file_md5.append(file_digest(target))
    table["path"], table["file_md5"] = packed_paths, file_md5
    table.to_csv(partial / COVERS_CSV, index=False)
    (partial / "splits").mkdir()
    for split_file in split_files:
        shutil.copy2(split_file, partial / "splits" / split_file.name)
    shutil.rmtree(scratch, ignore_errors=True)
    with _data_root_unset():  # the check reads the pack, whatever $GENREFUSION_DATA says for the source
        for name, overrides in cells:
            _check_cell(name, originals[name], overrides, partial, scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    manifest = {"format": PACK_FORMAT, "size": size, "image_format": image_format, "quality": quality,
                "cells": dict(cells),
                "covers": len(table), "source_table": str(csv_path), "files": _digests(partial)}
    manifest["bytes"] = sum((partial / f).stat().st_size for f in manifest["files"])
    write_json(partial / MANIFEST, manifest)
    partial.rename(out_dir)
    return manifest


def _packed_bytes(path: Path, size: int, image_format: str, quality: int) -> tuple[bytes, str]:
    """The cover decoded at ``size`` and re-encoded, with its suffix; a cover that cannot be decoded is
    kept byte for byte under its own suffix, so it fails from the pack with the reason it fails from the data."""
    try:
        pixels = load_cover(path, size)
    except CoverError:
        return path.read_bytes(), path.suffix
    buffer = io.BytesIO()
    # method 6: WebP's slowest, smallest encoding (~4% smaller than its default at the same quality).
    options = {"method": 6} if image_format == "webp" else {}
    Image.fromarray(pixels).save(buffer, image_format.upper(), quality=quality, **options)
    return buffer.getvalue(), IMAGE_FORMATS[image_format]


@contextlib.contextmanager
def _data_root_unset() -> Iterator[None]:
    saved = os.environ.pop(ENV_VAR, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[ENV_VAR] = saved


def _cell_table(prepared: PreparedData) -> pd.DataFrame:
    return prepared.items[["item_id", "label", "split", "md5"]].sort_values("item_id").reset_index(drop=True)


def _check_cell(name: str, expected: pd.DataFrame, overrides: list[str], pack_dir: Path, scratch: Path) -> None:
    cfg = compose_config([*overrides, *pack_overrides(pack_dir)])
    got = _cell_table(prepare_from_config(cfg, cfg.covers, scratch / name))
    if not got.equals(expected):
        raise CoverPackError(f"{name}: the pack gives other items, labels or split parts than the data "
                             f"({len(got)} items vs {len(expected)})")


def _digests(pack_dir: Path) -> dict[str, str]:
    return {str(path.relative_to(pack_dir)): file_digest(path, "sha256")
            for path in sorted(pack_dir.rglob("*")) if path.is_file() and path.name != MANIFEST}


def pack_digest(manifest: dict[str, Any]) -> str:
    """One SHA-256 over every file's name and digest: the pack's identity in a table's provenance."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(manifest["files"].items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def verify_cover_pack(pack_dir: str | Path, size: int | None = None) -> dict[str, Any]:
    """The pack's manifest, after checking every listed file is there with its digest and nothing was added.

    ``size``: the input size of the backbone about to train on it (a pack of another size is refused:
    resizing a resized cover again is not the table's recipe). Raises :class:`CoverPackError`.
    """
    pack_dir = Path(pack_dir)
    try:
        manifest = json.loads((pack_dir / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise CoverPackError(f"{pack_dir} is not a cover pack: {MANIFEST} unreadable ({error}); "
                             "make one with 'genrefusion pack-covers'") from error
    found = _digests(pack_dir)
    listed = manifest.get("files", {})
    changed = sorted(name for name in listed if found.get(name) != listed[name])
    added = sorted(set(found) - set(listed))
    if changed or added:
        raise CoverPackError(f"{pack_dir}: {len(changed)} file(s) missing or changed (e.g. {changed[:3]}), "
                             f"{len(added)} not in the manifest (e.g. {added[:3]}); make the pack again")
    if size is not None and int(manifest["size"]) != size:
        raise CoverPackError(f"{pack_dir} holds covers at {manifest['size']} px; the backbone takes {size} px: "
                             f"make a pack with --size {size}")
    if not features.check(manifest["image_format"]):
        raise CoverPackError(f"{pack_dir} holds {manifest['image_format']} covers, which this Pillow cannot "
                             "decode: install a Pillow built with it, or make a pack with --format jpeg")
    return manifest
