"""Per-cover model inputs computed once and cached: frozen-backbone embeddings and Random-Forest features.

Both walk an item table, decode each cover with :func:`covers.images.load_cover`, record
covers that fail (with the reason) instead of stopping, and cache one array per cover keyed by
the image's content hash and every parameter that shapes the result.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from covers.backbones import BackboneInfo, MapsBackbone, PixelNormaliser
from covers.images import CoverError, check_cover_file, load_cover
from data.items import LoadResult, file_digest, problems_frame
from engine.cache import ArrayCache, cache_key
from engine.inference import predict_outputs
from engine.progress import progress_bar

#: Bump when a feature computation changes, so old cache entries stop matching.
INPUTS_VERSION = 1


def pixels_first(images: np.ndarray) -> torch.Tensor:
    """Decoded covers ``uint8 (batch, s, s, 3)`` → ``uint8 (batch, 3, s, s)``, what cover models take."""
    # np.require copies only when needed: torch cannot wrap read-only (cached) arrays.
    return torch.from_numpy(np.require(images, requirements=["C", "W"])).permute(0, 3, 1, 2)


def _content_hash(row: pd.Series) -> str:
    """The digest of the file's bytes: ``file_md5`` where a table gives it apart from ``md5`` (a cover pack's
    ``md5`` names the original cover, whose pixels differ), else ``md5``, else computed."""
    for column in ("file_md5", "md5"):
        digest = row.get(column, "")
        if isinstance(digest, str) and digest:
            return digest
    return file_digest(row["cover_path"])


def _per_cover(items: pd.DataFrame, namespace: str, params: dict, cache_dir: str | Path | None, size: int,
               compute: Callable[[np.ndarray], np.ndarray], batch_size: int, desc: str,
               progress: bool) -> tuple[LoadResult, np.ndarray]:
    """Run ``compute`` (uint8 images → one row each) over the covers, cached; failures listed."""
    items = items.reset_index(drop=True)
    cache = ArrayCache(cache_dir, namespace) if cache_dir else None
    values: dict[int, np.ndarray] = {}
    problems: list[dict] = []
    pending: list[tuple[int, str, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        out = compute(np.stack([image for _, _, image in pending]))
        for (row, key, _), value in zip(pending, out):
            values[row] = value
            if cache:
                cache.put(key, value)
        pending.clear()

    for row in progress_bar(range(len(items)), desc=desc, enabled=progress):
        item = items.iloc[row]
        try:
            check_cover_file(item["cover_path"])
            key = cache_key(_content_hash(item), {**params, "v": INPUTS_VERSION}) if cache else ""
        except (CoverError, OSError) as error:
            problems.append({"where": item["cover_path"], "item_id": item["item_id"], "reason": str(error)})
            continue
        if cache and (hit := cache.get(key)) is not None:
            values[row] = hit
            continue
        try:
            pending.append((row, key, load_cover(item["cover_path"], size)))
        except CoverError as error:
            problems.append({"where": item["cover_path"], "item_id": item["item_id"], "reason": str(error)})
            continue
        if len(pending) >= batch_size:
            flush()
    flush()
    keep = sorted(values)
    array = np.stack([values[r] for r in keep]) if keep else np.zeros((0, 0), np.float32)
    return LoadResult(items.loc[keep].reset_index(drop=True), problems_frame(problems)), array


def decode_covers(items: pd.DataFrame, size: int, cache_dir: str | Path | None = None,
                  progress: bool = True) -> tuple[LoadResult, np.ndarray]:
    """The covers themselves, decoded and resized: ``uint8 (n_kept, size, size, 3)`` (fine-tuning input)."""
    return _per_cover(items, "cover_pixels", {"size": size}, cache_dir, size, lambda images: images, 64,
                      "decode covers", progress)


@functools.lru_cache(maxsize=8)
def _weights_digest(path: str) -> str:
    return file_digest(path)


def backbone_embeddings(items: pd.DataFrame, backbone: MapsBackbone, info: BackboneInfo,
                        cache_dir: str | Path | None = None, batch_size: int = 64, device: str = "auto",
                        progress: bool = True) -> tuple[LoadResult, np.ndarray]:
    """Pooled embeddings ``(n_kept, embed_dim)`` float32 of each cover from a pretrained ``backbone``.

    The cache key includes the weights file's digest, so embeddings of other weights never match.
    """
    if not info.weights:
        raise ValueError(f"{info.name}: embeddings are cached by their weights file; this backbone has none "
                         "(random initialisation gives no reusable embeddings)")
    network = nn.Sequential(PixelNormaliser(info), backbone)
    params = {"backbone": info.name, "weights": _weights_digest(str(info.weights)),
              "size": info.input_size, "mean": info.mean, "std": info.std}

    def embed(images: np.ndarray) -> np.ndarray:
        pixels = pixels_first(images)
        return predict_outputs(network, TensorDataset(pixels, torch.zeros(len(pixels))), batch_size, device, images=True)

    return _per_cover(items, "cover_embeddings", params, cache_dir, info.input_size, embed, batch_size,
                      f"{info.name} embeddings", progress)


#: Image side the Random-Forest features are computed at.
RF_SIZE = 256


def handcrafted_features(image: np.ndarray) -> np.ndarray:
    """Colour histograms, local binary patterns and Hu moments of one ``uint8 (s, s, 3)`` cover.

    - 3-D RGB colour histogram, 4 bins per channel (64 values, fractions) plus an 8-bin
      histogram per HSV channel (24);
    - uniform LBP (P=8, R=1) histogram of the grey image (10 bins, fractions);
    - the 7 Hu moments of the grey image, as sign · log10|h|.
    Returns float32 ``(105,)``.
    """
    from skimage.color import rgb2gray, rgb2hsv
    from skimage.feature import local_binary_pattern
    from skimage.measure import moments_central, moments_hu, moments_normalized

    pixels = image.reshape(-1, 3)
    joint = np.histogramdd(pixels // 64, bins=(4, 4, 4), range=[(0, 4)] * 3)[0].ravel() / len(pixels)
    hsv = rgb2hsv(image).reshape(-1, 3)
    per_channel = np.concatenate([np.histogram(hsv[:, c], bins=8, range=(0, 1))[0] for c in range(3)]) / len(hsv)
    grey = rgb2gray(image)
    lbp = local_binary_pattern((grey * 255).astype(np.uint8), P=8, R=1, method="uniform")
    lbp_hist = np.histogram(lbp, bins=10, range=(0, 10))[0] / lbp.size
    hu = moments_hu(moments_normalized(moments_central(grey), 3))
    hu = np.sign(hu) * np.log10(np.abs(hu) + 1e-30)
    return np.concatenate([joint, per_channel, lbp_hist, hu]).astype(np.float32)


def random_forest_features(items: pd.DataFrame, cache_dir: str | Path | None = None,
                           progress: bool = True) -> tuple[LoadResult, np.ndarray]:
    """:func:`handcrafted_features` of each cover ``(n_kept, 105)``."""
    def compute(images: np.ndarray) -> np.ndarray:
        return np.stack([handcrafted_features(image) for image in images])

    return _per_cover(items, "cover_rf_features", {"size": RF_SIZE}, cache_dir, RF_SIZE, compute, 32,
                      "colour/LBP/Hu features", progress)
