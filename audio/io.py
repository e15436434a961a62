"""Audio input: any file soundfile reads (WAV, FLAC, OGG, MP3 where libsndfile has it) → mono float32."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from data.items import input_file_problem

SAMPLE_RATE = 22050
#: Peak amplitude, after removing the mean (a DC offset is no sound), under which a clip is silent
#: (about -120 dBFS).
SILENCE_PEAK = 1e-6
#: Largest audio file read (bytes): a 20-minute 44.1 kHz stereo WAV is about 212 MB.
MAX_AUDIO_BYTES = 256 * 1024 * 1024
#: Longest audio decoded (seconds); a preview is 30 s, a long track 10 minutes.
MAX_AUDIO_SECONDS = 20 * 60


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


def check_audio_file(path: str | Path) -> None:
    """Raise :class:`AudioError` unless ``path`` is a regular file of at most :data:`MAX_AUDIO_BYTES`
    (a device such as ``/dev/zero`` or a pipe would be read forever)."""
    problem = input_file_problem(path, MAX_AUDIO_BYTES)
    if problem:
        raise AudioError(problem)


def read_audio(path: str | Path, sr: int = SAMPLE_RATE) -> AudioClip:
    """Decode the whole file to mono float32 at ``sr``, unchecked (windows are checked by :func:`take_window`).

    Refused with an :class:`AudioError`: anything but a regular file of at most
    :data:`MAX_AUDIO_BYTES`, what libsndfile cannot decode, and audio longer than
    :data:`MAX_AUDIO_SECONDS` (checked from the header, before decoding).
    """
    path = Path(path)
    check_audio_file(path)
    try:
        info = sf.info(path)
        if info.samplerate > 0 and info.frames / info.samplerate > MAX_AUDIO_SECONDS:
            raise AudioError(f"too long: {path.name} lasts {info.frames / info.samplerate:.0f} s "
                             f"(limit {MAX_AUDIO_SECONDS} s)")
        data, source_sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        if isinstance(error, AudioError):
            raise
        raise AudioError(f"unreadable audio: {path.name}: {error}") from error
    y = mix_to_mono(data)
    if source_sr != sr:
        import soxr

        y = soxr.resample(y, source_sr, sr, quality="HQ").astype(np.float32)
    return AudioClip(y=y, sr=sr, source_sr=source_sr)


def mix_to_mono(data: np.ndarray) -> np.ndarray:
    """The channels' mean of ``(n_samples, n_channels)`` audio: ``(n_samples,)`` in its dtype.

    Added column by column (numpy's mean along a short last axis costs ~27 ms for a 30-s 44.1 kHz
    stereo preview, this ~2 ms); with up to 7 channels the very values of ``data.mean(axis=1)`` (from 8 on,
    numpy sums pairwise: within a float32 rounding of them).
    """
    y = data[:, 0].copy()
    for channel in range(1, data.shape[1]):
        y += data[:, channel]
    if data.shape[1] > 1:
        y /= data.shape[1]
    return y


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
    if np.abs(y - y.mean()).max() < SILENCE_PEAK:
        raise AudioError(f"silent audio: {name}" + (" (a constant offset, no sound)" if np.abs(y).max() >= SILENCE_PEAK
                                                    else ""))
    padded = 0
    if n_samples is not None and len(y) < n_samples:
        if not pad:
            raise AudioError(f"too short: {name} has {len(y)} of {n_samples} samples")
        padded = n_samples - len(y)
        y = np.pad(y, (0, padded))
    return AudioClip(y=np.ascontiguousarray(y, dtype=np.float32), sr=clip.sr, source_sr=clip.source_sr,
                     padded=padded)
