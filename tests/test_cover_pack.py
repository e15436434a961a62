"""The paper table's cover pack (covers.pack), and a failed row of the table driver skipping only the rows that
need it. The table fine-tuned from a pack end to end, rows in parallel processes: tests/test_device_kit.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PER_GENRE

from covers.images import load_cover
from covers.pack import CoverPackError, build_cover_pack, pack_overrides, verify_cover_pack
from covers.reproduce import cell_overrides


def _prepared(overrides: list[str]) -> pd.DataFrame:
    from data.config import compose_config, prepare_from_config

    cfg = compose_config(overrides)
    return prepare_from_config(cfg, cfg.covers, Path(cfg.paths.root_dir) / "check").items


def test_a_pack_gives_the_datas_items_and_splits_with_its_covers_resized_once(pack, small_data_root):
    pack_dir, extra = pack
    manifest = verify_cover_pack(pack_dir, size=224)
    assert manifest["size"] == 224 and manifest["image_format"] == "webp"
    for protocol in ("group", "random"):
        base = cell_overrides("paper3", protocol, extra)
        from_data = _prepared(base).set_index("item_id")
        from_pack = _prepared([*base, *pack_overrides(pack_dir)]).set_index("item_id")
        # The copy collapses and the cover under two genres is dropped, from the pack as from the data.
        assert "covers/discogs/pop/corrupt" in from_data.index
        assert not {"covers/discogs/hiphop/copy", "covers/discogs/country/two-genres"} & set(from_data.index)
        assert len(from_pack) == len(from_data) >= 3 * PER_GENRE - 3
        pd.testing.assert_frame_equal(from_pack[["label", "split", "md5"]],
                                      from_data.loc[from_pack.index, ["label", "split", "md5"]])
        assert all(Path(p).is_relative_to(pack_dir) for p in from_pack["cover_path"])
    packed = from_pack.loc[from_data.index[0], "cover_path"]
    assert packed.endswith(".webp")
    original = load_cover(from_data.iloc[0]["cover_path"], 224).astype(float)
    difference = np.abs(load_cover(packed, 224).astype(float) - original)
    assert 0 < difference.mean() < 4  # one lossy re-encoding, not another picture
    corrupt = pack_dir / "covers/discogs/pop/corrupt.jpg"
    assert corrupt.read_bytes() == (small_data_root / "covers/discogs/pop/corrupt.jpg").read_bytes()


def test_a_changed_added_or_wrongly_sized_pack_is_refused(pack, tmp_path, monkeypatch):
    pack_dir, _ = pack
    copy = tmp_path / "copy"
    shutil.copytree(pack_dir, copy)
    with pytest.raises(CoverPackError, match="260 px"):
        verify_cover_pack(copy, size=260)
    cover = next(copy.rglob("*.webp"))
    cover.write_bytes(cover.read_bytes()[:-10])
    with pytest.raises(CoverPackError, match="1 file\\(s\\) missing or changed"):
        verify_cover_pack(copy)
    shutil.copy2(pack_dir / cover.relative_to(copy), cover)
    (copy / "covers" / "stray.webp").write_bytes(b"x")
    with pytest.raises(CoverPackError, match="1 not in the manifest"):
        verify_cover_pack(copy)
    with pytest.raises(CoverPackError, match="not a cover pack"):
        verify_cover_pack(tmp_path)
    with pytest.raises(CoverPackError, match="never written over"):
        build_cover_pack(copy, [], size=224)
    monkeypatch.setenv("GENREFUSION_DATA", str(tmp_path))
    with pytest.raises(CoverPackError, match="GENREFUSION_DATA"):
        pack_overrides(pack_dir)


def test_a_failed_row_skips_only_the_rows_that_take_its_predictions(monkeypatch, tmp_path):
    """The driver's scheduling, rows standing in for training: the M3 rows, which M4 and M5 wait for, start
    first; a failed M3 skips its cell's M4 and M5 alone."""
    import covers.reproduce as reproduce

    started = []

    def fake_row(row, mode, command):
        started.append(row.key)
        if row.model == "M3" and row.protocol == "group":
            return {"labels": row.label_set, "protocol": row.protocol, "model": row.model, "failed": True}
        return {"labels": row.label_set, "protocol": row.protocol, "model": row.model, "accuracy": 0.5}

    monkeypatch.setattr(reproduce, "run_row", fake_row)
    rows = reproduce.table_rows(tmp_path, ["paper3"], ["group", "random"], "finetune", "efficientnet_lite0")
    done = reproduce._run_rows(rows, "finetune", "", parallel=1)
    skipped = {key for key, result in done.items() if result.get("skipped")}
    assert skipped == {("paper3", "group", "M4"), ("paper3", "group", "M5")}
    assert len(done) == len(rows) == 14
    assert started[:2] == [("paper3", "group", "M3"), ("paper3", "random", "M3")]
    assert started[-2:] == [("paper3", "random", "M4"), ("paper3", "random", "M5")]
