"""Looking inside a trained audio run: embeddings, a 2-D map and the most confidently wrong test clips."""
from __future__ import annotations

from pathlib import Path

from audio.mel import MelParams
from audio.predict import (
    audio_embeddings,
    audio_inputs,
    audio_windows,
    load_audio_model,
    predict_audio_inputs,
)
from data.config import run_items
from engine.inference import BEST_CHECKPOINT
from engine.inspection import (
    embedding_map,
    export_embeddings,
    plot_map,
    read_embeddings,
    top_losses,
)


def explain_audio_run(run_dir: str | Path, out_dir: str | Path, cache_dir: str | Path | None = None,
                      n_top: int = 20, n_jobs: int = 2, progress: bool = True, seed: int = 0) -> dict[str, Path]:
    """``embeddings.parquet`` (each clip's penultimate layer, through the branch's predict path), ``map.png``
    (UMAP, else t-SNE; test clips crossed) and ``top_losses.csv`` (the most confidently wrong test clips)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, record = load_audio_model(Path(run_dir) / BEST_CHECKPOINT)
    spec = model.spec
    inputs = audio_inputs(audio_windows(run_items(record), model.segments), model.kinds, cache_dir, n_jobs=n_jobs,
                          progress=progress, mel=MelParams(**spec["mel"]), mel_frames=spec["mel_frames"],
                          features=spec.get("features"), musicnn=spec.get("musicnn"),
                          min_seconds=spec.get("min_seconds", 0.0))
    clips, proba, _ = predict_audio_inputs(model, inputs)
    clips_again, vectors = audio_embeddings(model, inputs)
    assert list(clips_again["item_id"]) == list(clips["item_id"])
    table = clips.reset_index(drop=True).assign(predicted=[model.labels[i] for i in proba.argmax(1)])
    written = {"embeddings": export_embeddings(out_dir / "embeddings.parquet", table, vectors)}
    _, exported = read_embeddings(written["embeddings"])
    coordinates, how = embedding_map(exported, seed)
    is_test = (table["split"] == "test").to_numpy()
    title = f"audio {record['model'].get('kind')} penultimate layer, {how}; {len(table)} clips"
    written["map"] = plot_map(coordinates, table["label"], is_test, out_dir / "map.png", title)
    worst = top_losses(table[is_test].reset_index(drop=True), proba[is_test], model.labels, n_top)
    columns = [c for c in ("item_id", "label", "predicted", "p_predicted", "p_true", "loss", "audio_path") if c in worst]
    worst[columns].to_csv(out_dir / "top_losses.csv", index=False)
    written["top_losses"] = out_dir / "top_losses.csv"
    return written
