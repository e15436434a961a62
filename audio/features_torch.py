"""The 57 GTZAN features on torch: a batch of clips at once, on CPU or CUDA.

Computes what :func:`audio.features.gtzan_features` computes (that librosa-based extractor stays
the reference the tests compare against), with the same single reflect-padded STFT feeding every
spectral feature. Each librosa step is written out as tensor code over a batch
``(batch, n_samples)``: chroma with its per-clip tuning estimate (``piptrack`` peaks, the
0.01-semitone histogram), RMS, centroid, bandwidth, roll-off, zero crossings, HPSS by median
filtering with soft masks and its two inverse STFTs, the mel onset envelope and tempogram behind
the tempo, and the MFCCs. The clips of one batch must have the same length (a 30-s preview, or
3-s segments).
"""
from __future__ import annotations

import functools

import librosa
import numba
import numpy as np
import scipy.fft
import torch
from torch import nn

from audio.features import HOP_LENGTH, HPSS_KERNEL, N_FFT, PAD_MODE
from audio.features import running_median as cpu_running_median
from audio.io import SAMPLE_RATE, AudioError
from audio.mel import MelParams, MelSpectrogram, stft
from data.gtzan import FEATURE_COLUMNS

N_MFCC = 20
N_CHROMA = 12
#: Tempogram window: ``librosa.feature.tempo``'s ``ac_size`` (seconds), 344 frames at 22,050 Hz and hop 512.
TEMPO_WINDOW_SECONDS = 8.0
#: librosa's ``piptrack`` band and peak threshold, used for the chroma tuning estimate.
PIPTRACK_FMIN, PIPTRACK_FMAX, PIPTRACK_THRESHOLD = 150.0, 4000.0, 0.1
TUNING_RESOLUTION = 0.01


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def _normalize(S: torch.Tensor, norm: float, dim: int, nonnegative: bool = False) -> torch.Tensor:
    """``librosa.util.normalize`` without fill: columns whose norm is below ``tiny`` are left as they are.
    ``nonnegative``: ``S`` has no negative value (a magnitude, a power), so its absolute value is itself."""
    magnitude = S if nonnegative else S.abs()
    length = magnitude.amax(dim=dim, keepdim=True) if norm == float("inf") else magnitude.sum(dim=dim, keepdim=True)
    return S / torch.where(length < _tiny(S), torch.ones_like(length), length)


def _mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) variance over every axis but the batch one, accumulated in float64."""
    flat = x.reshape(x.shape[0], -1).double()
    return flat.mean(dim=1), flat.var(dim=1, correction=0)


def _symmetric_pad(x: torch.Tensor, half: int) -> torch.Tensor:
    """Pad the last axis by ``half`` mirrored samples, the edge repeated (scipy.ndimage's ``reflect``)."""
    return torch.cat([x[..., :half].flip(-1), x, x[..., -half:].flip(-1)], dim=-1)


def magnitude_and_power(spectrum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``|spectrum|`` and ``|spectrum|**2`` of a complex tensor, both float32 of its shape.

    On the CPU one numba pass (torch's complex ``abs`` is an overflow-safe ``hypot``, ~10x slower;
    a spectrum's squares are far from overflowing); elsewhere tensor code.
    """
    if spectrum.device.type != "cpu":
        magnitude = spectrum.abs()
        return magnitude, magnitude**2
    # In the spectrum's own memory order (torch.stft's is frames-major): no copy of the complex spectrum.
    frames_major = spectrum.transpose(-1, -2).contiguous()
    flat = frames_major.numpy().reshape(-1)
    magnitude, power = np.empty(flat.shape, np.float32), np.empty(flat.shape, np.float32)
    _magnitude_power_kernel(flat, magnitude, power)
    return (torch.from_numpy(magnitude).view(frames_major.shape).transpose(-1, -2),
            torch.from_numpy(power).view(frames_major.shape).transpose(-1, -2))


@numba.njit(cache=True, nogil=True)
def _magnitude_power_kernel(spectrum, magnitude, power) -> None:
    for i in range(spectrum.shape[0]):
        squared = spectrum[i].real * spectrum[i].real + spectrum[i].imag * spectrum[i].imag
        power[i] = squared
        magnitude[i] = np.sqrt(squared)


def running_median(S: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Median over ``width`` (odd) neighbours along ``dim`` of ``(batch, freq, frames)``, edges mirrored,
    as ``scipy.ndimage.median_filter`` with a 1-D window.

    On a GPU :func:`unfolded_median`; on the CPU, where that is much slower, the rank-tracking
    kernel of :func:`audio.features.running_median` (numba).
    """
    if S.device.type == "cpu":
        medians = [torch.from_numpy(cpu_running_median(clip.numpy(), width, dim)) for clip in S]
        # One clip (a scoring worker's): its median as the kernel laid it out, without a copy.
        return medians[0].unsqueeze(0) if len(medians) == 1 else torch.stack(medians)
    # Clip by clip: the unfolded windows of one 30-s clip take ~160 MB, of a batch of 32 ~5 GB.
    return torch.cat([unfolded_median(S[i:i + 1], width, dim) for i in range(len(S))])


def unfolded_median(S: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """:func:`running_median` as one tensor operation: every window unfolded (``width`` × the memory), then its median."""
    windows = _symmetric_pad(S.movedim(dim, -1), width // 2).unfold(-1, width, 1)
    return windows.median(dim=-1).values.movedim(-1, dim)


def hpss_masks(harmonic: torch.Tensor, percussive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``librosa.util.softmask(H, P, power=2)`` and ``softmask(P, H, power=2)`` (``split_zeros=False``),
    from the two median-filtered magnitudes; where both are ~0 both masks are 0."""
    Z = torch.maximum(harmonic, percussive)
    silent = Z < _tiny(Z)
    Z = torch.where(silent, torch.ones_like(Z), Z)
    h, p = (harmonic / Z) ** 2, (percussive / Z) ** 2
    total = torch.where(silent, torch.ones_like(Z), h + p)
    zero = torch.zeros_like(Z)
    return torch.where(silent, zero, h / total), torch.where(silent, zero, p / total)


def harmonic_spectrum(spectrum: torch.Tensor, harmonic: torch.Tensor,
                      percussive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``spectrum`` times the harmonic mask of :func:`hpss_masks`, and for each clip whether the two
    masks sum to one on every bin that carries energy: ``(harmonic spectrum, complete (batch,) bool)``.

    Where ``complete``, the percussive spectrum is ``spectrum`` less the harmonic one (the masks
    leave out only bins where both medians are ~0). On the CPU one numba pass over the bins (mask
    and product without a temporary per step); elsewhere the tensor code of :func:`hpss_masks`.
    """
    if spectrum.device.type != "cpu":
        mask_harmonic, _ = hpss_masks(harmonic, percussive)
        left_out = (torch.maximum(harmonic, percussive) < _tiny(harmonic)) & (spectrum != 0)
        return spectrum * mask_harmonic, ~left_out.flatten(1).any(dim=1)
    # Frames-major, as torch.stft lays the spectrum out: the inverse FFT then reads the same memory
    # layout as before masking (another layout rounds a clip differently alone and in a batch).
    batch = spectrum.shape[0]
    frames_major = spectrum.transpose(-1, -2).contiguous()
    out = torch.empty_like(frames_major)
    complete = np.empty(batch, dtype=np.bool_)
    _harmonic_kernel(frames_major.numpy().reshape(batch, -1),
                     harmonic.transpose(-1, -2).contiguous().numpy().reshape(batch, -1),
                     percussive.transpose(-1, -2).contiguous().numpy().reshape(batch, -1),
                     out.numpy().reshape(batch, -1), np.finfo(np.float32).tiny, complete)
    return out.transpose(-1, -2), torch.from_numpy(complete)


@numba.njit(cache=True, nogil=True)
def _harmonic_kernel(spectrum, harmonic, percussive, out, tiny, complete) -> None:
    for clip in range(spectrum.shape[0]):
        whole = True
        for i in range(spectrum.shape[1]):
            z = max(harmonic[clip, i], percussive[clip, i])
            if z < tiny:
                out[clip, i] = 0
                whole = whole and spectrum[clip, i] == 0
                continue
            h = (harmonic[clip, i] / z) ** 2
            p = (percussive[clip, i] / z) ** 2
            out[clip, i] = spectrum[clip, i] * (h / (h + p))
        complete[clip] = whole


def estimate_tuning(power: torch.Tensor, sr: int, n_fft: int) -> torch.Tensor:
    """``librosa.estimate_tuning(S=power, sr=sr, n_fft=n_fft, bins_per_octave=12)`` for each clip:
    ``(batch,)`` fractions of a semitone in ``[-0.5, 0.5)``, steps of 0.01.

    ``piptrack``'s peaks are looked for only in its band (150–4,000 Hz) and the bin either side,
    which is all its result depends on; its threshold is still relative to each frame's maximum.
    """
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    in_band = np.flatnonzero((freqs >= PIPTRACK_FMIN) & (freqs < min(PIPTRACK_FMAX, sr / 2)))
    lo, hi = int(in_band[0]), int(in_band[-1]) + 1  # inside (0, n_bins - 1): both neighbours exist
    S = power[..., lo - 1: hi + 1, :]
    thresholded = S * (S > PIPTRACK_THRESHOLD * power.amax(dim=-2, keepdim=True))
    peaks = (thresholded[..., 1:-1, :] > thresholded[..., :-2, :]) & (thresholded[..., 1:-1, :] >= thresholded[..., 2:, :])
    edges = torch.linspace(-0.5, 0.5, int(np.ceil(1.0 / TUNING_RESOLUTION)) + 1, dtype=torch.float64)
    tunings = []
    for clip_peaks, clip_S in zip(peaks, S):
        # Only at the peaks (a small share of the band's bins), in the order a boolean mask takes them:
        # parabolic interpolation through the peak and its neighbours, the offset in bins (0 where it
        # would exceed one), the magnitude corrected by half the gradient times the offset.
        row, frame = clip_peaks.nonzero(as_tuple=True)
        below, centre, above = clip_S[row, frame], clip_S[row + 1, frame], clip_S[row + 2, frame]
        a = above + below - 2 * centre
        b = (above - below) / 2
        shift = torch.where(b.abs() >= a.abs(), torch.zeros_like(a), -b / torch.where(a == 0, torch.ones_like(a), a))
        pitch = ((row + lo).to(S.dtype) + shift) * (float(sr) / n_fft)
        mag = centre + 0.5 * b * shift
        voiced = pitch > 0
        if not voiced.any():
            tunings.append(torch.zeros((), dtype=torch.float64))
            continue
        voiced_mag = mag[voiced]
        f = pitch[voiced][voiced_mag >= _median(voiced_mag)].double()
        residual = torch.remainder(N_CHROMA * torch.log2(f / (440.0 / 16)), 1.0)
        residual = torch.where(residual >= 0.5, residual - 1.0, residual)
        counts = torch.histogram(residual.cpu(), edges).hist
        tunings.append(edges[int(torch.argmax(counts))])
    return torch.stack(tunings)


def _median(x: torch.Tensor) -> torch.Tensor:
    """``np.median``: the mean of the two middle values when the count is even."""
    ordered = x.sort().values
    n = ordered.numel()
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


@functools.lru_cache(maxsize=128)
def _chroma_filters(sr: int, n_fft: int, tuning: float) -> torch.Tensor:
    return torch.as_tensor(librosa.filters.chroma(sr=sr, n_fft=n_fft, tuning=tuning, n_chroma=N_CHROMA))


@functools.lru_cache(maxsize=4)
def _dct_matrix(n_mels: int) -> torch.Tensor:
    """Rows of the orthonormal DCT-II (``scipy.fftpack.dct(..., norm="ortho")``), the first N_MFCC."""
    return torch.as_tensor(scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:N_MFCC])


def _tempogram_frames(sr: int, hop_length: int) -> int:
    return int(librosa.time_to_frames(TEMPO_WINDOW_SECONDS, sr=sr, hop_length=hop_length))


@functools.lru_cache(maxsize=4)
def _tempo_prior(sr: int, hop_length: int) -> tuple[np.ndarray, np.ndarray]:
    """BPM of each tempogram lag, and the log-normal prior around 120 BPM (−inf above 320 BPM)."""
    bpms = librosa.tempo_frequencies(_tempogram_frames(sr, hop_length), hop_length=hop_length, sr=sr)
    with np.errstate(divide="ignore"):
        logprior = -0.5 * (np.log2(bpms) - np.log2(120.0)) ** 2
    logprior[: int(np.argmax(bpms < 320.0))] = -np.inf
    return bpms, logprior


def _centred(y: torch.Tensor, frame_length: int, pad_mode: str) -> torch.Tensor:
    """``y`` padded by ``frame_length // 2`` at both ends, as centred frames are."""
    half = frame_length // 2
    if pad_mode == "edge":
        return torch.cat([y[:, :1].expand(-1, half), y, y[:, -1:].expand(-1, half)], dim=1)
    return torch.nn.functional.pad(y.unsqueeze(1), (half, half), mode=pad_mode).squeeze(1)


def _frame_sums(x: torch.Tensor, frame_length: int, hop_length: int, first: int = 0) -> torch.Tensor:
    """Sums of ``x[..., t·hop + first : t·hop + frame_length]`` (float64) for every frame ``t`` that fits.

    Each hop's block is summed once and a frame adds its ``frame_length / hop`` blocks (less its first
    ``first`` samples), instead of summing every frame's samples again (4× overlap). ``frame_length``
    must be a multiple of ``hop_length``.
    """
    if frame_length % hop_length:
        raise ValueError(f"frame_length ({frame_length}) must be a multiple of hop_length ({hop_length})")
    n_frames = 1 + (x.shape[-1] - frame_length) // hop_length
    slices = frame_length // hop_length
    n_blocks = n_frames + slices - 1
    blocks = x[..., :n_blocks * hop_length].double().reshape(*x.shape[:-1], n_blocks, hop_length).sum(dim=-1)
    sums = blocks[..., :n_frames].clone()
    for j in range(1, slices):
        sums += blocks[..., j:j + n_frames]
    starts = torch.arange(n_frames, device=x.device) * hop_length
    for offset in range(first):
        sums -= x[..., starts + offset].double()
    return sums


class GtzanFeatures(nn.Module):
    """Waveforms ``(batch, n_samples)`` float32 at ``sr`` → the 57 features ``(batch, 57)`` float64,
    columns in :data:`data.gtzan.FEATURE_COLUMNS` order.

    The mel filterbank and window are buffers (``.to(device)`` moves them); chroma filters, which
    depend on each clip's tuning, are built on the CPU and cached by tuning value.
    """

    def __init__(self, sr: int = SAMPLE_RATE, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> None:
        super().__init__()
        self.sr, self.n_fft, self.hop_length = sr, n_fft, hop_length
        self.mel = MelSpectrogram(MelParams(sr=sr, n_fft=n_fft, hop_length=hop_length, top_db=None))
        freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
        self.register_buffer("freqs", torch.as_tensor(freqs, dtype=torch.float32).view(-1, 1), persistent=False)
        bpms, logprior = _tempo_prior(sr, hop_length)
        self.register_buffer("bpms", torch.as_tensor(bpms), persistent=False)
        self.register_buffer("tempo_logprior", torch.as_tensor(logprior), persistent=False)
        self.register_buffer("dct", _dct_matrix(self.mel.params.n_mels).float(), persistent=False)
        self.tempogram_frames = _tempogram_frames(sr, hop_length)
        self.register_buffer("ac_window", torch.hann_window(self.tempogram_frames, periodic=True, dtype=torch.float32),
                             persistent=False)

    @torch.no_grad()
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        if y.ndim == 1:
            y = y.unsqueeze(0)
        n_samples = y.shape[-1]
        if n_samples <= self.n_fft // 2:  # reflection padding needs more samples than it adds
            raise AudioError(f"too short for the GTZAN features: {n_samples} samples ({n_samples / self.sr:.3f} s); "
                             f"at least {self.n_fft // 2 + 1} needed")
        spectrum = stft(y, self.n_fft, self.hop_length, self.mel.window, PAD_MODE)
        magnitude, power = magnitude_and_power(spectrum)
        columns: dict[str, torch.Tensor] = {}

        def add(name: str, values: torch.Tensor) -> None:
            columns[f"{name}_mean"], columns[f"{name}_var"] = _mean_var(values)

        add("chroma_stft", self._chroma(power))
        power_sums = _frame_sums(_centred(y, self.n_fft, PAD_MODE).pow(2), self.n_fft, self.hop_length)
        add("rms", (power_sums / self.n_fft).sqrt())
        weights = _normalize(magnitude, 1, dim=-2, nonnegative=True)
        centroid = (self.freqs * weights).sum(dim=-2, keepdim=True)
        add("spectral_centroid", centroid)
        # Laid out as the spectrogram (torch.stft's frames-major): elementwise products of tensors in
        # different layouts are several times slower.
        deviation = torch.sub(self.freqs, centroid, out=torch.empty_like(weights))
        add("spectral_bandwidth", deviation.square_().mul_(weights).sum(dim=-2).sqrt())
        add("rolloff", self._rolloff(magnitude))
        add("zero_crossing_rate", self._zero_crossing_rate(y))

        along_time = running_median(magnitude, HPSS_KERNEL, -1)
        along_freq = running_median(magnitude, HPSS_KERNEL, -2)
        harmonic, complete = harmonic_spectrum(spectrum, along_time, along_freq)
        harmony = self._waveform(harmonic, n_samples)
        add("harmony", harmony)
        add("perceptr", self._percussive_waveform(y, harmony, spectrum, along_time, along_freq, complete))

        mel_db = _power_to_db(self.mel.mel_basis @ power)
        columns["tempo"] = self._tempo(mel_db)
        mfcc = self.dct @ mel_db
        for i in range(N_MFCC):
            add(f"mfcc{i + 1}", mfcc[:, i])
        return torch.stack([columns[c].double() for c in FEATURE_COLUMNS], dim=1)

    def _chroma(self, power: torch.Tensor) -> torch.Tensor:
        tuning = estimate_tuning(power, self.sr, self.n_fft)
        filters = torch.stack([_chroma_filters(self.sr, self.n_fft, float(t)) for t in tuning]).to(power)
        return _normalize(filters @ power, float("inf"), dim=-2, nonnegative=True)

    def _rolloff(self, magnitude: torch.Tensor) -> torch.Tensor:
        # The lowest frequency whose cumulative magnitude reaches 85% of the frame's: the cumulative sum
        # only grows along frequency, so that bin's index is the count of bins below the threshold, which
        # a binary search finds (frame by frame, frequency last).
        total = magnitude.transpose(-1, -2).cumsum(dim=-1)
        below = torch.searchsorted(total.contiguous(), 0.85 * total[..., -1:]).squeeze(-1)
        return self.freqs[:, 0][below.clamp_max(self.freqs.shape[0] - 1)]

    def _zero_crossing_rate(self, y: torch.Tensor) -> torch.Tensor:
        padded = _centred(y, self.n_fft, "edge")
        negative = (padded < 0) & (padded.abs() > 1e-10)
        # A crossing between samples i - 1 and i counts in each frame holding both.
        crossings = torch.nn.functional.pad(negative[..., 1:] != negative[..., :-1], (1, 0))
        return _frame_sums(crossings, self.n_fft, self.hop_length, first=1) / self.n_fft

    def _waveform(self, spectrum: torch.Tensor, n_samples: int) -> torch.Tensor:
        # As audio.features._waveform: inverted without a length (the last partial hop dropped),
        # then zero-padded back to the clip's length.
        wave = inverse_stft(spectrum, self.n_fft, self.hop_length, self.mel.window)
        return torch.nn.functional.pad(wave, (0, n_samples - wave.shape[-1]))[..., :n_samples]

    def _percussive_waveform(self, y: torch.Tensor, harmony: torch.Tensor, spectrum: torch.Tensor,
                             along_time: torch.Tensor, along_freq: torch.Tensor,
                             complete: torch.Tensor) -> torch.Tensor:
        # Where the soft masks sum to one, the percussive waveform is the clip less the harmonic one
        # (the STFT inverts exactly over the samples an inversion keeps): one inverse STFT, not two.
        # Clips with energy in bins that neither mask keeps invert their own percussive spectrum.
        n_samples = y.shape[-1]
        kept = self.hop_length * (spectrum.shape[-1] - 1)
        wave = torch.nn.functional.pad(y[:, :kept] - harmony[:, :kept], (0, n_samples - kept))
        if not bool(complete.all()):
            rest = ~complete.to(y.device)
            _, mask_percussive = hpss_masks(along_time[rest], along_freq[rest])
            wave[rest] = self._waveform(spectrum[rest] * mask_percussive, n_samples)
        return wave

    def _tempo(self, mel_db: torch.Tensor) -> torch.Tensor:
        # librosa.onset.onset_strength(S=mel_db, aggregate=np.median): the positive first difference,
        # its median over mel bands, shifted by 1 + n_fft // (2 * hop) frames.
        n_frames = mel_db.shape[-1]
        flux = (mel_db[..., 1:] - mel_db[..., :-1]).clamp_min(0)
        onset = _lower_median_dim(flux, dim=-2)
        onset = torch.nn.functional.pad(onset, (1 + self.n_fft // (2 * self.hop_length), 0))[..., :n_frames]
        # librosa.feature.tempogram: centred windows (linear ramps to 0 at both ends), Hann-weighted,
        # autocorrelated, each normalised by its maximum; averaged over time; the log-normal prior
        # around 120 BPM picks the period.
        width = self.tempogram_frames
        half = width // 2
        padded = torch.cat([_ramp(onset[:, :1], half, rising=True), onset, _ramp(onset[:, -1:], half, rising=False)],
                           dim=-1)
        windows = padded.unfold(-1, width, 1)[:, :n_frames] * self.ac_window
        n_pad = scipy.fft.next_fast_len(2 * width - 1, real=True)
        # |X|² as re² + im²: torch's complex abs is an overflow-safe hypot, several times slower.
        spectrum = torch.fft.rfft(windows, n=n_pad)
        autocorr = torch.fft.irfft(spectrum.real.square() + spectrum.imag.square(), n=n_pad)[..., :width]
        tempogram = _normalize(autocorr, float("inf"), dim=-1).mean(dim=1).double()
        best = torch.argmax(torch.log1p(1e6 * tempogram) + self.tempo_logprior, dim=-1)
        return self.bpms[best]


def overlap_add(frames: torch.Tensor, hop_length: int) -> torch.Tensor:
    """Frames ``(batch, n_frames, frame_length)`` laid ``hop_length`` apart and summed:
    ``(batch, hop_length · (n_frames - 1) + frame_length)``. ``frame_length`` must be a multiple of
    ``hop_length``: each of its ``frame_length / hop_length`` slices is then one strided add."""
    batch, n_frames, frame_length = frames.shape
    if frame_length % hop_length:
        raise ValueError(f"overlap_add needs frame_length ({frame_length}) to be a multiple of hop_length ({hop_length})")
    slices = frame_length // hop_length
    out = frames.new_zeros(batch, (n_frames + slices - 1) * hop_length)
    parts = frames.reshape(batch, n_frames, slices, hop_length)
    for j in range(slices):
        out[:, j * hop_length:(j + n_frames) * hop_length] += parts[:, :, j].reshape(batch, n_frames * hop_length)
    return out


def _squared_window_sum(window: torch.Tensor, n_frames: int, hop_length: int) -> torch.Tensor:
    """:func:`overlap_add` of ``n_frames`` copies of ``window²`` (the same additions in the same order),
    without laying out the copies (a 30-s clip's would take 10 MB): ``(hop_length · (n_frames - 1) + len(window),)``."""
    slices = window.shape[0] // hop_length
    blocks = window.pow(2).reshape(slices, hop_length)
    out = window.new_zeros(n_frames + slices - 1, hop_length)
    for j in range(slices):
        out[j:j + n_frames] += blocks[j]
    return out.reshape(-1)


def inverse_stft(spectrum: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """``torch.istft(spectrum, n_fft, hop_length, window=window, center=True)`` of ``(batch, 1 + n_fft // 2,
    n_frames)``, by overlap-add in strided slices (:func:`overlap_add`; ~3× faster on the CPU than
    torch's, within float32 rounding of it): ``(batch, hop_length · (n_frames - 1))`` samples."""
    frames = torch.fft.irfft(spectrum.transpose(-1, -2), n=n_fft).mul_(window)
    n_frames = frames.shape[1]
    waveform = overlap_add(frames, hop_length)  # checks that hop_length divides n_fft
    start, stop = n_fft // 2, n_fft // 2 + hop_length * (n_frames - 1)
    envelope = _squared_window_sum(window, n_frames, hop_length)[start:stop]
    if envelope.numel() and float(envelope.abs().min()) < 1e-11:
        raise ValueError("inverse_stft: the window's overlap-added envelope has zeros (window and hop do not "
                         "satisfy the NOLA condition)")
    return waveform[:, start:stop] / envelope


def _ramp(edge: torch.Tensor, n: int, rising: bool) -> torch.Tensor:
    """``np.pad(mode="linear_ramp", end_values=0)``'s ``n`` samples between 0 and the edge value."""
    steps = torch.arange(n, device=edge.device, dtype=edge.dtype) / n
    return edge * (steps if rising else steps.flip(0))


def _lower_median_dim(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``np.median`` along ``dim`` (the mean of the two middle values for an even count); on the CPU
    ``np.median`` itself (a partial sort, ~3x faster than sorting)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.median(x.numpy(), axis=dim))
    n = x.shape[dim]
    ordered = x.sort(dim=dim).values
    middle = ordered.narrow(dim, n // 2, 1)
    if n % 2 == 0:
        middle = (middle + ordered.narrow(dim, n // 2 - 1, 1)) / 2
    return middle.squeeze(dim)


def _power_to_db(S: torch.Tensor, amin: float = 1e-10, top_db: float = 80.0) -> torch.Tensor:
    """``librosa.power_to_db(S)`` (ref 1.0) per clip: the floor is each clip's maximum minus ``top_db``."""
    db = 10.0 * torch.log10(S.clamp_min(amin))
    return torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - top_db)


def gtzan_features_torch(y: np.ndarray | torch.Tensor, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """The 57 features of one clip, keyed by column name (the torch path on the CPU)."""
    values = _default_module(sr)(torch.as_tensor(np.asarray(y, dtype=np.float32)))[0]
    return dict(zip(FEATURE_COLUMNS, values.tolist()))


@functools.lru_cache(maxsize=2)
def _default_module(sr: int) -> GtzanFeatures:
    return GtzanFeatures(sr)
