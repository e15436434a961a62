"""musicnn (Pons & Serra, 2019) ported to PyTorch: pretrained music tagging, offline.

The network and its input are the ``musicnn`` package's (0.1.0, ISC licence), whose TensorFlow
checkpoints :mod:`acquire.musicnn_weights` converts once into torch state dicts:

- input: 16 kHz mono, mel power spectrogram (n_fft 512, hop 256, 96 Slaney bands), rounded to
  float16 as the package stores it, then ``log10(1 + 10000·S)`` in float32 (NumPy 1.x, which the
  package pins, promotes ``10000 · float16`` to float32);
- non-overlapping patches of 187 frames (3 s);
- front end: two timbral convolutions (7 × 38 and 7 × 67 over time × mel) and three temporal
  ones (128, 64, 32 × 1), each max-pooled over frequency; mid end: three 7-frame convolutions
  with residual connections; back end: max- and mean-pooling over time, batch norm, a 200-unit
  dense layer (the penultimate embedding) and 50 sigmoid tag outputs.

TensorFlow's layers keep channels last; here ``(batch, channels, time, mel)``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audio.mel import MelParams, MelSpectrogram

SAMPLE_RATE = 16000
MEL = MelParams(sr=SAMPLE_RATE, n_fft=512, hop_length=256, n_mels=96, top_db=None)
#: Frames in one 3-second patch (``librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1``).
PATCH_FRAMES = 187
BN_EPS = 1e-3

MSD_TAGS = ["rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s", "alternative rock",
            "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul", "indie rock", "Mellow",
            "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies", "blues", "hard rock",
            "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
            "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb",
            "indie pop", "sad", "House", "happy"]
MTT_TAGS = ["guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
            "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing", "vocals",
            "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop", "soft",
            "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice", "female vocal",
            "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice", "choral"]
#: The pretrained models of the ``musicnn`` wheel this port covers, and their tags.
MODELS = {"MSD_musicnn": MSD_TAGS, "MTT_musicnn": MTT_TAGS}
#: Where converted weights live unless ``GENREFUSION_WEIGHTS`` says otherwise (git-ignored, safe to delete).
WEIGHTS_ENV = "GENREFUSION_WEIGHTS"
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / ".cache" / "weights"


class MissingMusicnnWeights(FileNotFoundError):
    """The converted musicnn weights are not on this machine."""


def weights_path(model: str) -> Path:
    """Where the converted state dict of ``model`` lives."""
    if model not in MODELS:
        raise ValueError(f"unknown musicnn model {model!r}; known: {sorted(MODELS)}")
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR) / "musicnn" / f"{model}.pt"


def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MusicnnNet(nn.Module):
    """The musicnn network on log-mel patches ``(batch, 187, 96)`` → ``(tag logits (batch, 50), penultimate (batch, 200))``."""

    def __init__(self, n_tags: int = 50, n_mels: int = 96, midend_filters: int = 64, backend_units: int = 200) -> None:
        super().__init__()
        self.input_bn = _bn2d(1)
        timbral = [(7, int(0.4 * n_mels)), (7, int(0.7 * n_mels))]
        self.timbral = nn.ModuleList(nn.Conv2d(1, int(1.6 * 128), k) for k in timbral)
        self.timbral_bn = nn.ModuleList(_bn2d(int(1.6 * 128)) for _ in timbral)
        self.temporal_kernels = (128, 64, 32)
        self.temporal = nn.ModuleList(nn.Conv2d(1, int(1.6 * 32), (k, 1)) for k in self.temporal_kernels)
        self.temporal_bn = nn.ModuleList(_bn2d(int(1.6 * 32)) for _ in self.temporal_kernels)
        front = 2 * int(1.6 * 128) + 3 * int(1.6 * 32)
        widths = [front, midend_filters, midend_filters]
        self.midend = nn.ModuleList(nn.Conv2d(1, midend_filters, (7, width)) for width in widths)
        self.midend_bn = nn.ModuleList(_bn2d(midend_filters) for _ in widths)
        pooled = 2 * (front + 3 * midend_filters)
        self.pool_bn = nn.BatchNorm1d(pooled, eps=BN_EPS)
        self.dense = nn.Linear(pooled, backend_units)
        self.dense_bn = nn.BatchNorm1d(backend_units, eps=BN_EPS)
        self.output = nn.Linear(backend_units, n_tags)
        self.embed_dim = backend_units

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.input_bn(patches.unsqueeze(1))  # (B, 1, T, F)
        front = []
        for conv, bn in zip(self.timbral, self.timbral_bn):
            front.append(bn(F.relu(conv(F.pad(x, (0, 0, 3, 3))))).amax(dim=3))  # max over frequency
        for kernel, conv, bn in zip(self.temporal_kernels, self.temporal, self.temporal_bn):
            before = (kernel - 1) // 2  # TensorFlow's "same": the odd one out goes after
            front.append(bn(F.relu(conv(F.pad(x, (0, 0, before, kernel - 1 - before))))).amax(dim=3))
        features = torch.cat(front, dim=1).transpose(1, 2)  # (B, T, 561)
        layers = [features]
        current = features
        for i, (conv, bn) in enumerate(zip(self.midend, self.midend_bn)):
            out = bn(F.relu(conv(F.pad(current.unsqueeze(1), (0, 0, 3, 3))))).squeeze(3).transpose(1, 2)
            current = out if i == 0 else out + current  # residual from the second layer on
            layers.append(current)
        stacked = torch.cat(layers, dim=2)  # (B, T, 753)
        pooled = torch.stack([stacked.amax(dim=1), stacked.mean(dim=1)], dim=2).flatten(1)  # max, mean per feature
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return self.output(penultimate), penultimate


def state_dict_from_tensorflow(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map a musicnn TensorFlow checkpoint (as arrays by name) onto :class:`MusicnnNet`'s state dict.

    TensorFlow names layers by creation order: batch norms 0–10, convolutions 0–7, dense 0–1.
    """
    def conv(i: int) -> dict[str, torch.Tensor]:
        name = "conv2d" if i == 0 else f"conv2d_{i}"
        kernel = torch.from_numpy(tensors[f"{name}/kernel"]).permute(3, 2, 0, 1)  # (kh, kw, in, out) → (out, in, kh, kw)
        return {"weight": kernel.contiguous(), "bias": torch.from_numpy(tensors[f"{name}/bias"])}

    def bn(i: int) -> dict[str, torch.Tensor]:
        name = "batch_normalization" if i == 0 else f"batch_normalization_{i}"
        return {"weight": torch.from_numpy(tensors[f"{name}/gamma"]), "bias": torch.from_numpy(tensors[f"{name}/beta"]),
                "running_mean": torch.from_numpy(tensors[f"{name}/moving_mean"]),
                "running_var": torch.from_numpy(tensors[f"{name}/moving_variance"]),
                "num_batches_tracked": torch.tensor(0)}

    def dense(i: int) -> dict[str, torch.Tensor]:
        name = "dense" if i == 0 else f"dense_{i}"
        return {"weight": torch.from_numpy(tensors[f"{name}/kernel"]).T.contiguous(),
                "bias": torch.from_numpy(tensors[f"{name}/bias"])}

    layout = {"input_bn": bn(0), "timbral.0": conv(0), "timbral_bn.0": bn(1), "timbral.1": conv(1),
              "timbral_bn.1": bn(2), **{f"temporal.{i}": conv(2 + i) for i in range(3)},
              **{f"temporal_bn.{i}": bn(3 + i) for i in range(3)}, **{f"midend.{i}": conv(5 + i) for i in range(3)},
              **{f"midend_bn.{i}": bn(6 + i) for i in range(3)}, "pool_bn": bn(9), "dense": dense(0),
              "dense_bn": bn(10), "output": dense(1)}
    return {f"{module}.{name}": value for module, values in layout.items() for name, value in values.items()}


def load_musicnn(model: str = "MSD_musicnn", path: str | Path | None = None) -> MusicnnNet:
    """The pretrained network, from its converted state dict (see :mod:`acquire.musicnn_weights`)."""
    path = Path(path) if path else weights_path(model)
    if not path.is_file():
        raise MissingMusicnnWeights(
            f"musicnn weights {path} are not here. They come from the musicnn wheel on PyPI and are converted "
            "once by `make weights` (pip download --no-deps musicnn==0.1.0, then "
            "`python -m acquire.musicnn_weights <wheel>`); `make install` does both. Set GENREFUSION_WEIGHTS to "
            "use another folder.")
    net = MusicnnNet(n_tags=len(MODELS[model]))
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


class MusicnnFrontEnd(nn.Module):
    """Waveforms at 16 kHz ``(batch, n_samples)`` → musicnn's log-mel ``(batch, frames, 96)`` float32."""

    def __init__(self) -> None:
        super().__init__()
        self.mel = MelSpectrogram(MEL)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # The package stores the spectrogram as float16, then takes the log in float32.
        rounded = self.mel.power(y).transpose(1, 2).half().float()
        return torch.log10(rounded * 10000 + 1)


def patches(log_mel: torch.Tensor) -> torch.Tensor:
    """Non-overlapping 187-frame patches of one clip's ``(frames, 96)`` log-mel: ``(n_patches, 187, 96)``.

    As in the package, the tail shorter than a patch is dropped; a clip shorter than one patch
    (about 3 s) has none.
    """
    n = (log_mel.shape[0] - PATCH_FRAMES) // PATCH_FRAMES + 1 if log_mel.shape[0] >= PATCH_FRAMES else 0
    return log_mel[: n * PATCH_FRAMES].reshape(n, PATCH_FRAMES, log_mel.shape[1])



#: musicnn tag → broad genre, as data (``model,tag,genre``); edit it to change the zero-shot mapping.
TAG_GENRES = Path(__file__).resolve().parent / "musicnn_tag_genres.csv"
EMBEDDING_DIM = 200


class TagGenres(nn.Module):
    """Zero-shot genres from musicnn tags ``(batch, 50 · len(models))`` → log-probabilities ``(batch, k)``.

    A genre's score is the mean probability of the tags the table maps to it; the scores are
    normalised over the label set. (Log-probabilities, so that a softmax gives them back.)
    """

    def __init__(self, models: list[str], labels: list[str], table: str | Path | None = None) -> None:
        super().__init__()
        import pandas as pd

        rows = pd.read_csv(table or TAG_GENRES, dtype=str, keep_default_na=False)
        tags = [(model, tag) for model in models for tag in MODELS[model]]
        index = {key: i for i, key in enumerate(tags)}
        mapping = torch.zeros(len(tags), len(labels))
        for model, tag, genre in rows[["model", "tag", "genre"]].itertuples(index=False):
            if (model, tag) not in index and model in models:
                raise ValueError(f"{table or TAG_GENRES}: {model} has no tag {tag!r}")
            if (model, tag) in index and genre in labels:
                mapping[index[(model, tag)], labels.index(genre)] = 1.0
        unmapped = [label for label, column in zip(labels, mapping.T) if column.sum() == 0]
        if unmapped:
            raise ValueError(f"no tag of {models} maps to {unmapped} in {table or TAG_GENRES}: add rows for them "
                             "(or use another label set) to classify zero-shot")
        self.register_buffer("mapping", mapping / mapping.sum(0))

    def embed(self, tags: torch.Tensor) -> torch.Tensor:
        """The tag probabilities themselves (what the zero-shot genres are read from)."""
        return tags

    def forward(self, tags: torch.Tensor) -> torch.Tensor:
        scores = tags @ self.mapping
        return torch.log(scores / scores.sum(1, keepdim=True).clamp_min(1e-12) + 1e-12)


@functools.lru_cache(maxsize=4)
def _cached_network(model: str) -> MusicnnNet:
    return load_musicnn(model)


def musicnn_outputs(y: np.ndarray, models: tuple[str, ...]) -> np.ndarray:
    """One clip (16 kHz mono) through musicnn, one forward pass per network: for each model in order,
    its mean tag probabilities (50) then its mean penultimate embedding (200) over the clip's 3-second
    patches (see :func:`output_columns`)."""
    front = MusicnnFrontEnd()
    with torch.no_grad():
        clip_patches = patches(front(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[None])[0])
        if len(clip_patches) == 0:
            raise ValueError(f"too short for musicnn: {len(y) / SAMPLE_RATE:.2f} s, at least 3 s are needed")
        values = []
        for model in models:
            logits, embedding = _cached_network(model)(clip_patches)
            values += [torch.sigmoid(logits).mean(0), embedding.mean(0)]
    return torch.cat(values).numpy().astype(np.float32)


def output_columns(models: tuple[str, ...], output: str) -> np.ndarray:
    """Column indices of :func:`musicnn_outputs`' vector holding ``output`` (``tags`` or ``embedding``)."""
    width = len(MSD_TAGS) + EMBEDDING_DIM
    start, stop = (0, len(MSD_TAGS)) if output == "tags" else (len(MSD_TAGS), width)
    return np.concatenate([np.arange(i * width + start, i * width + stop) for i in range(len(models))])
