"""Log-mel spectrograms on ``torch.stft``, batched, on CPU or GPU; equal to librosa's.

``MelSpectrogram`` reproduces ``librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr,
n_fft=…, hop_length=…, n_mels=…), ref=np.max, top_db=80)`` for each row of a batch: the same
Hann window, centred frames with zero padding, Slaney mel filterbank (taken from librosa) and
dB floor. The filterbank is a buffer, so ``.to(device)`` moves everything.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import librosa
import numpy as np
import torch
from torch import nn

from audio.features import HOP_LENGTH, N_FFT
from audio.io import SAMPLE_RATE


@dataclass(frozen=True)
class MelParams:
    """Everything that shapes a spectrogram (and so its cache key)."""

    sr: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    top_db: float | None = 80.0
    amin: float = 1e-10

    def as_dict(self) -> dict:
        return asdict(self)


def stft(y: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor, pad_mode: str) -> torch.Tensor:
    """Complex STFT ``(batch, 1 + n_fft // 2, 1 + n_samples // hop_length)`` of waveforms ``(batch, n_samples)``:
    centred frames (``pad_mode`` ``"constant"`` as librosa ≥ 0.10, ``"reflect"`` as before), as ``librosa.stft``."""
    return torch.stft(y, n_fft=n_fft, hop_length=hop_length, window=window.to(y.dtype), center=True,
                      pad_mode=pad_mode, return_complex=True)


class MelSpectrogram(nn.Module):
    """Waveforms ``(batch, n_samples)`` float → log-mel ``(batch, n_mels, 1 + n_samples // hop_length)`` in dB.

    Each row is referenced to its own maximum (0 dB) and floored at ``-top_db``.
    """

    def __init__(self, params: MelParams = MelParams()) -> None:
        super().__init__()
        self.params = params
        basis = librosa.filters.mel(sr=params.sr, n_fft=params.n_fft, n_mels=params.n_mels,
                                    fmin=params.fmin, fmax=params.fmax)
        self.register_buffer("mel_basis", torch.as_tensor(basis, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(params.n_fft, periodic=True), persistent=False)

    def power(self, y: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram ``(batch, n_mels, frames)`` (librosa's ``melspectrogram``)."""
        if y.ndim == 1:
            y = y.unsqueeze(0)
        spec = stft(y, self.params.n_fft, self.params.hop_length, self.window, "constant")
        return self.mel_basis.to(y.dtype) @ spec.abs().pow(2)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        mel = self.power(y)
        amin = self.params.amin
        db = 10.0 * torch.log10(mel.clamp_min(amin))
        ref = mel.amax(dim=(-2, -1), keepdim=True).clamp_min(amin)
        db = db - 10.0 * torch.log10(ref)
        if self.params.top_db is not None:
            db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - self.params.top_db)
        return db


def librosa_log_mel(y: np.ndarray, params: MelParams = MelParams()) -> np.ndarray:
    """The librosa computation ``MelSpectrogram`` reproduces (reference for tests)."""
    mel = librosa.feature.melspectrogram(y=y, sr=params.sr, n_fft=params.n_fft, hop_length=params.hop_length,
                                         n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax)
    return librosa.power_to_db(mel, ref=np.max, amin=params.amin, top_db=params.top_db)
