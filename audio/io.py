"""Audio input: any file soundfile reads (WAV, FLAC, OGG, MP3 where libsndfile has it) → mono float32."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 22050
#: Peak amplitude under which a clip counts as silent (about -120 dBFS).
SILENCE_PEAK = 1e-6


class AudioError(ValueError):
    """A file that cannot be used as audio: missing, unreadable, corrupt, empty or silent."""


@dataclass
class AudioClip:
    y: np.ndarray  # (n_samples,) float32 in [-1, 1]
    sr: int
    source_sr: int
    padded: int = 0  # zero samples appended to reach the requested length

    @property
    def flags(self) -> str:
        return f"padded {self.padded} samples" if self.padded else ""


def load_audio(path: str | Path, sr: int = SAMPLE_RATE, offset: int = 0, n_samples: int | None = None,
               pad: bool = True) -> AudioClip:
    """Read ``path``, mix to mono, resample to ``sr`` (soxr, as librosa does).

    ``offset``/``n_samples`` select a window in samples at ``sr`` (see :func:`take_window`).
    Raises :class:`AudioError` with the reason for missing, unreadable, empty or silent audio.
    """
    path = Path(path)
    return take_window(read_audio(path, sr), path.name, offset, n_samples, pad)


def read_audio(path: str | Path, sr: int = SAMPLE_RATE) -> AudioClip:
    """Decode the whole file to mono float32 at ``sr``, unchecked (windows are checked by :func:`take_window`)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"missing file: {path}")
    try:
        data, source_sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioError(f"unreadable audio: {path.name}: {error}") from error
    y = data.mean(axis=1)
    if source_sr != sr:
        import soxr

        y = soxr.resample(y, source_sr, sr, quality="HQ").astype(np.float32)
    return AudioClip(y=y, sr=sr, source_sr=source_sr)


def take_window(clip: AudioClip, name: str, offset: int = 0, n_samples: int | None = None,
                pad: bool = True) -> AudioClip:
    """Samples ``offset … offset + n_samples`` of a decoded clip (all from ``offset`` when ``n_samples`` is None).

    A window running past the end is zero-padded when ``pad`` (the result says how much).
    Raises :class:`AudioError` for an empty, non-finite or silent window.
    """
    end = None if n_samples is None else offset + n_samples
    y = clip.y[offset:end]
    if y.size == 0:
        raise AudioError(f"empty audio: {name} (no samples at offset {offset})")
    if not np.isfinite(y).all():
        raise AudioError(f"corrupt audio: {name} has non-finite samples")
    if np.abs(y).max() < SILENCE_PEAK:
        raise AudioError(f"silent audio: {name}")
    padded = 0
    if n_samples is not None and len(y) < n_samples:
        if not pad:
            raise AudioError(f"too short: {name} has {len(y)} of {n_samples} samples")
        padded = n_samples - len(y)
        y = np.pad(y, (0, padded))
    return AudioClip(y=np.ascontiguousarray(y, dtype=np.float32), sr=clip.sr, source_sr=clip.source_sr,
                     padded=padded)
