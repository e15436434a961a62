"""Looking inside a trained branch, whatever its modality: embeddings as Parquet, a 2-D map, top losses."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from engine.io import atomic_path

log = logging.getLogger(__name__)
#: Columns of an embeddings export besides ``vector``.
EMBEDDING_COLUMNS = ["item_id", "label", "split", "predicted"]


def export_embeddings(path: str | Path, items: pd.DataFrame, vectors: np.ndarray) -> Path:
    """Parquet with ``item_id, label, split, predicted`` and ``vector`` (a list of float32 per item)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(items) != len(vectors):
        raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
    columns = {c: pa.array(items[c].astype(str).tolist()) for c in EMBEDDING_COLUMNS}
    width = vectors.shape[1] if vectors.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, width)
    path = Path(path)
    with atomic_path(path) as temporary:
        pq.write_table(pa.table(columns), temporary)
    return path


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """What :func:`export_embeddings` wrote: the item columns and the ``(n, d)`` vectors."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)) if table.num_rows else np.zeros((0, 0))
    return table.drop(["vector"]).to_pandas(), vectors.astype(np.float32)


def embedding_map(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``vectors``: UMAP (umap-learn), or t-SNE (scikit-learn) where UMAP cannot run.

    Returns ``(coordinates (n, 2), method name)``. The vectors are standardised first.
    """
    x = np.asarray(vectors, dtype=np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    try:
        import umap

        if len(x) < 10:
            raise ValueError("too few items for UMAP")
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed)
        return reducer.fit_transform(x), "UMAP"
    except (ImportError, ValueError, TypeError) as error:
        from sklearn.manifold import TSNE

        log.info("UMAP unavailable (%s); using t-SNE", error)
        perplexity = float(max(2, min(30, (len(x) - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x), "t-SNE"


def plot_map(coordinates: np.ndarray, labels: Sequence[str], is_test: np.ndarray, path: str | Path, title: str,
             thumbnails: Sequence[np.ndarray] | None = None, thumbnail_zoom: float = 0.12) -> Path:
    """The 2-D map coloured by genre, test items drawn as crosses; with ``thumbnails``, each point's cover."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(9, 8) if thumbnails is not None else (7, 6))
    colours = dict(zip(sorted(set(labels)), plt.get_cmap("tab10").colors))
    if thumbnails is not None:
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage

        for (x, y), image, label in zip(coordinates, thumbnails, labels):
            box = AnnotationBbox(OffsetImage(image, zoom=thumbnail_zoom), (x, y), frameon=True, pad=0.05,
                                 bboxprops={"edgecolor": colours[label], "linewidth": 1.5})
            ax.add_artist(box)
        ax.update_datalim(coordinates)
        ax.autoscale()
    for label, colour in colours.items():
        for test, marker, size in ((False, "o", 10), (True, "x", 28)):
            chosen = (labels == label) & (np.asarray(is_test) == test)
            if chosen.any():
                ax.scatter(*coordinates[chosen].T, s=size, marker=marker, color=colour, alpha=0.8,
                           label=f"{label}{' (test)' if test else ''}")
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def top_losses(items: pd.DataFrame, proba: np.ndarray, labels: Sequence[str], k: int = 12) -> pd.DataFrame:
    """The ``k`` wrongly predicted items with the highest loss (−log p of the true class), highest first.

    ``items`` needs ``y``; the result adds ``predicted``, ``p_predicted``, ``p_true`` and ``loss``.
    """
    y = items["y"].to_numpy(dtype=int)
    predicted = proba.argmax(1)
    p_true = proba[np.arange(len(y)), y]
    table = items.reset_index(drop=True).assign(
        predicted=[labels[i] for i in predicted], p_predicted=proba.max(1), p_true=p_true,
        loss=-np.log(np.clip(p_true, 1e-12, 1)))
    return table[predicted != y].sort_values("loss", ascending=False, kind="stable").head(k).reset_index(drop=True)
