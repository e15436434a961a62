"""Class-activation maps (pytorch-grad-cam) and "most typical covers" grids for a trained cover model."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from covers.backbones import CoverClassifier
from covers.images import load_cover
from covers.inputs import pixels_first
from covers.predict import cover_embeddings, cover_inputs, load_cover_model, predict_cover_inputs
from data.config import run_items
from engine.inference import BEST_CHECKPOINT
from engine.inspection import embedding_map, export_embeddings, plot_map, read_embeddings, top_losses


#: Class-activation methods of pytorch-grad-cam a run can ask for.
CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam")


def class_activation_maps(model: CoverClassifier, x: torch.Tensor, method: str = "gradcam",
                          class_index: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class-activation maps through pytorch-grad-cam, on the backbone's last feature maps.

    ``x``: raw pixels ``uint8 (batch, 3, s, s)``; maps are for ``class_index`` (default: the predicted
    class), ``(batch, s, s)`` in [0, 1]. Returns ``(maps, probabilities (batch, n_classes))``.
    """
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    methods = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM, "eigencam": EigenCAM}
    if method not in methods:
        raise ValueError(f"unknown CAM method {method!r}; known: {list(methods)}")
    model.eval()
    with torch.no_grad():
        proba = torch.softmax(model(x), 1).numpy()
    targets = proba.argmax(1) if class_index is None else np.asarray(class_index)
    # Score-CAM multiplies the input by masks, so the CAM methods get the normalised float images and the
    # network behind the pixel normaliser.
    behind_pixels = nn.Sequential(model.backbone, model.head).eval()
    with methods[method](model=behind_pixels, target_layers=[model.backbone.map_output]) as cam:
        maps = cam(input_tensor=model.pixels(x), targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return np.asarray(maps, dtype=np.float32), proba


def most_typical(predictions: pd.DataFrame, labels: Sequence[str], per_class: int = 6) -> pd.DataFrame:
    """For each class, the covers predicted as it with the highest probability (``predictions.csv`` rows)."""
    picked = []
    for label in labels:
        rows = predictions[predictions["predicted"] == label].sort_values(f"p_{label}", ascending=False)
        picked.append(rows.head(per_class).assign(typical_of=label))
    return pd.concat(picked, ignore_index=True)


def save_grid(images: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, columns: int = 6,
              overlays: Sequence[np.ndarray] | None = None) -> Path:
    """Images (``uint8 (s, s, 3)``) in a grid with titles; ``overlays`` (``(s, s)`` in [0, 1]) drawn as heat maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (image, title) in enumerate(zip(images, titles)):
        ax = axes.ravel()[i]
        ax.imshow(image)
        if overlays is not None:
            ax.imshow(overlays[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def explain_cover_run(run_dir: str | Path, out_dir: str | Path, cache_dir: str | Path | None = None,
                      method: str = "gradcam", n_cam: int = 12, per_class: int = 6, n_top: int = 12,
                      max_map_items: int = 2000, thumbnails: int = 300, progress: bool = True,
                      seed: int = 0) -> dict[str, Path]:
    """Everything :mod:`scripts.explain` writes for a covers run, through the branch's predict path.

    ``embeddings.parquet`` (every item's backbone pool, at most ``max_map_items`` sampled per split
    part), ``map.png`` (UMAP, else t-SNE; test items crossed) and ``map_covers.png`` (``thumbnails``
    covers drawn at their places), ``top_losses.png``/``.csv`` (the most confidently wrong test covers),
    ``cam_<method>.png`` (class-activation maps of ``n_cam`` test covers) and ``typical_covers.png``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, record = load_cover_model(Path(run_dir) / BEST_CHECKPOINT)
    labels = model.labels
    items = run_items(record)
    if len(items) > max_map_items:
        items = items.groupby("split", group_keys=False).sample(frac=max_map_items / len(items), random_state=seed)
    kept, x = cover_inputs(model, items, cache_dir, progress=progress)
    proba = predict_cover_inputs(model, x)
    table = kept.items.reset_index(drop=True).assign(predicted=[labels[i] for i in proba.argmax(1)])
    written = {"embeddings": export_embeddings(out_dir / "embeddings.parquet", table, cover_embeddings(model, x))}
    _, vectors = read_embeddings(written["embeddings"])
    coordinates, how = embedding_map(vectors, seed)
    is_test = (table["split"] == "test").to_numpy()
    title = f"{model.info.name} ({model.mode}) embeddings, {how}; {len(table)} covers"
    written["map"] = plot_map(coordinates, table["label"], is_test, out_dir / "map.png", title)
    shown = np.random.default_rng(seed).choice(len(table), min(thumbnails, len(table)), replace=False)
    covers = [load_cover(p, 64) for p in table["cover_path"].iloc[shown]]
    written["map_covers"] = plot_map(coordinates[shown], table["label"].iloc[shown], is_test[shown],
                                     out_dir / "map_covers.png", title + " (covers drawn)", thumbnails=covers)

    test = table[is_test].reset_index(drop=True)
    test_proba = proba[is_test]
    worst = top_losses(test, test_proba, labels, n_top)
    worst.drop(columns=[c for c in worst.columns if c.startswith("p_") and c[2:] in labels], errors="ignore").to_csv(
        out_dir / "top_losses.csv", index=False)
    written["top_losses"] = save_grid(
        [load_cover(p, 160) for p in worst["cover_path"]],
        [f"true {t}\npred {p} ({q:.2f})" for t, p, q in zip(worst["label"], worst["predicted"], worst["p_predicted"])],
        out_dir / "top_losses.png")

    size = model.info.input_size
    sample = test.sample(min(n_cam, len(test)), random_state=seed)
    images = [load_cover(p, size) for p in sample["cover_path"]]
    cams, cam_proba = class_activation_maps(model.network, pixels_first(np.stack(images)), method)
    titles = [f"pred {labels[p.argmax()]} {p.max():.2f}\n(true {t})" for p, t in zip(cam_proba, sample["label"])]
    written["cam"] = save_grid(images, titles, out_dir / f"cam_{method}.png", overlays=cams)

    predictions = test.assign(**{f"p_{label}": test_proba[:, i] for i, label in enumerate(labels)})
    typical = most_typical(predictions, labels, per_class)
    written["typical"] = save_grid(
        [load_cover(p, size) for p in typical["cover_path"]],
        [f"{r.typical_of} p={getattr(r, 'p_' + r.typical_of):.2f}\n(true {r.label})" for r in typical.itertuples()],
        out_dir / "typical_covers.png", columns=per_class)
    return written
