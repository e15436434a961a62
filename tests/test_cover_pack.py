"""The paper table's cover pack (covers.pack) and the table driver's rows: run in parallel processes, from a
pack, each with where it was made; a failed row skips only the rows that need it."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import GENREFUSION, PER_GENRE

from covers.images import load_cover
from covers.pack import CoverPackError, build_cover_pack, pack_overrides, verify_cover_pack
from covers.reproduce import cell_overrides


def _renderer():
    spec = importlib.util.spec_from_file_location("render", Path(__file__).resolve().parent.parent / "docs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    import covers.reproduce as reproduce

    def fake_row(row, mode, command):
        if row.model == "M3" and row.protocol == "group":
            return {"labels": row.label_set, "protocol": row.protocol, "model": row.model, "failed": True}
        return {"labels": row.label_set, "protocol": row.protocol, "model": row.model, "accuracy": 0.5}

    monkeypatch.setattr(reproduce, "run_row", fake_row)
    rows = reproduce.table_rows(tmp_path, ["paper3"], ["group", "random"], "finetune", "efficientnet_lite0")
    done = reproduce._run_rows(rows, "finetune", "", parallel=1)
    skipped = {key for key, result in done.items() if result.get("skipped")}
    assert skipped == {("paper3", "group", "M4"), ("paper3", "group", "M5")}
    assert len(done) == len(rows) == 14


@pytest.mark.slow
def test_the_table_fine_tunes_rows_in_parallel_from_a_pack_and_records_where_each_was_made(pack, tmp_path):
    """A tiny fine-tune of every row of one cell through the driver, two rows at a time in their own
    processes, the covers read from the pack; a second call reuses every row."""
    pack_dir, _ = pack
    out = tmp_path / "table"

    def main(arguments: list[str]) -> int:
        result = subprocess.run([GENREFUSION, "reproduce-covers", *arguments], capture_output=True, text=True,
                                timeout=900, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.returncode

    args = ["--labels", "paper3", "--protocols", "group", "--mode", "finetune", "--parallel", "2",
            "--pack", str(pack_dir), "--out", str(out), "--", "trainer.max_epochs=1", "trainer.batch_size=8",
            "trainer.progress=false", "+covers.n_estimators=20"]
    assert main(args) == 0
    results = pd.DataFrame(json.loads((out / "results.json").read_text())["rows"]).set_index("model")
    models = ["RF", "M1", "M2", "M3", "M4", "M5"]
    assert results.loc[models, "n"].nunique() == 1 and not results.loc[models, "reused"].any()
    for model in models:
        record = json.loads((out / "paper3-group" / model / "row.json").read_text())
        assert record["command"].startswith("genrefusion reproduce-covers --labels paper3")
        assert results.loc[model, "machine"] == f"{record['machine']['cpu']}, {record['machine']['cpu_cores']} cores"
    # M4 and M5 took their class weights from M3's finished predictions.
    m3_done = (out / "paper3-group" / "M3" / "predictions.csv").stat().st_mtime_ns
    assert all((out / "paper3-group" / m / "config.yaml").stat().st_mtime_ns >= m3_done for m in ("M4", "M5"))
    card = json.loads((out / "paper3-group" / "M1" / "model_card.json").read_text())
    assert Path(card["data_loader"]["csv_path"]).is_relative_to(pack_dir)
    table = (out / "table.md").read_text()
    assert "made on (commit)" in table and "Commands that made the rows" in table and "from the pack" in table

    assert main(args) == 0
    again = pd.DataFrame(json.loads((out / "results.json").read_text())["rows"]).set_index("model")
    assert again.loc[models, "reused"].all()
    assert list(again.loc[models, "accuracy"]) == list(results.loc[models, "accuracy"])

    # The frozen table from the same pack, and the two side by side as docs/ renders them: the Random
    # Forest, the same model in both, differs by exactly 0; M5 has no frozen row but its gain over M4.
    frozen = tmp_path / "frozen"
    main([*args[:args.index("--mode")], "--mode", "frozen", *args[args.index("--mode") + 2:args.index("--out")],
          "--out", str(frozen), *args[args.index("--out") + 2:]])
    renderer = _renderer()
    side_by_side = renderer.covers_tables(str(frozen), str(out)).splitlines()
    rf = next(line for line in side_by_side if "| group | RF |" in line)
    assert "| +0.000 [+0.000, +0.000] | 1.000 |" in rf
    m1 = next(line for line in side_by_side if "| group | M1 |" in line)
    assert m1.count("[") == 3 and "not run yet" not in m1
    assert any(line.startswith("| paper3 | group | ") and line.count("|") == 5 for line in side_by_side)  # M5 − M4
    not_yet = renderer.covers_tables(str(frozen), str(tmp_path / "absent"))
    assert "not run yet" in not_yet and "M5 − M4" not in not_yet
