"""Audio preprocessing with SciPy (``scipy.io.wavfile``, ``scipy.signal``): wav -> the arrays the loaders read.

* :func:`ks_logmel` (Kinetics-Sounds, MELD): mono 16 kHz, 128-bin log-mel filterbank over a 25 ms
  Hamming window with a 10 ms hop (512-point FFT), padded or cropped to 1024 frames: ``(1024, 128)``
  float32 (time, mel). The filterbank is triangular on the HTK mel scale ``1127 ln(1 + f / 700)`` from
  20 Hz to Nyquist (Kaldi's layout; a filter that catches no FFT bin takes the bin nearest its centre);
  values are ``ln(mel power + 1e-6)``.
* :func:`mmd_spectrogram` (MM-Debiased): mono 16 kHz, 10 s (shorter clips repeated, longer ones cut),
  ``scipy.signal.spectrogram`` with a 512-sample window and an overlap of 353 samples (hop 159), values
  ``ln(power + 1e-7)``, cropped or padded to 1003 frames: ``(257, 1003)`` float32 (frequency, time).
  (10 s at 16 kHz gives 1004 frames; the authors' arrays have 1003.)

Padding repeats the array's minimum (the quietest value), like the loaders do.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

RATE = 16000
KS_FRAMES, MEL_BINS = 1024, 128
MMD_FRAMES, MMD_SECONDS = 1003, 10.0


class AudioFileError(ValueError):
    """An audio file cannot be read or holds no samples; the message names it."""


def read_wav(path) -> tuple:
    """(mono float32 samples in [-1, 1], sample rate) from a PCM or float wav file."""
    from scipy.io import wavfile

    path = Path(path)
    try:
        rate, data = wavfile.read(path)
    except FileNotFoundError:
        raise AudioFileError(f"audio file {path} does not exist") from None
    except (ValueError, OSError, EOFError) as exc:
        raise AudioFileError(f"audio file {path} is not a readable wav file: {exc}") from None
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        x = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    else:
        x = data.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.size == 0:
        raise AudioFileError(f"audio file {path} holds no samples")
    return np.clip(x, -1.0, 1.0), int(rate)


def resample(x: np.ndarray, rate: int, target: int = RATE) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``) from `rate` to `target` Hz."""
    if rate == target:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def mel_filterbank(n_mels: int, n_fft: int, rate: int, fmin: float = 20.0, fmax=None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the HTK mel scale."""
    fmax = rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= rate / 2:
        raise ValueError(f"mel filterbank: need 0 <= fmin < fmax <= rate / 2, got {fmin}, {fmax}, rate {rate}")

    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    edges = np.linspace(mel(fmin), mel(fmax), n_mels + 2)
    bins = mel(np.arange(n_fft // 2 + 1) * rate / n_fft)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None, :] - left) / (center - left)
    down = (right - bins[None, :]) / (right - center)
    fb = np.clip(np.minimum(up, down), 0.0, None)
    # A low filter narrower than the FFT bin spacing catches no bin (128 filters on a 512-point FFT at
    # 16 kHz: one); it takes the bin nearest its centre instead of staying empty.
    for j in np.flatnonzero(fb.sum(1) == 0):
        fb[j, np.argmin(np.abs(bins - edges[j + 1]))] = 1.0
    return fb.astype(np.float32)


def log_mel(
    x: np.ndarray,
    rate: int,
    n_mels: int = MEL_BINS,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    window: str = "hamming",
    n_fft=None,
    fmin: float = 20.0,
    eps: float = 1e-6,
) -> np.ndarray:
    """(frames, n_mels) float32 log-mel energies; frames = 1 + (len - win) // hop (no padding)."""
    from scipy.signal import get_window, spectrogram

    win = int(round(rate * win_ms / 1000))
    hop = int(round(rate * hop_ms / 1000))
    n_fft = n_fft or 1 << (win - 1).bit_length()
    if x.size < win:
        x = np.pad(x, (0, win - x.size))
    _, _, power = spectrogram(
        x,
        rate,
        window=get_window(window, win),
        nperseg=win,
        noverlap=win - hop,
        nfft=n_fft,
        detrend=False,
        scaling="spectrum",
        mode="psd",
    )
    fb = mel_filterbank(n_mels, n_fft, rate, fmin)
    return np.log(fb @ power + eps).T.astype(np.float32)


def log_spectrogram(x: np.ndarray, rate: int, nperseg: int = 512, noverlap: int = 353, eps: float = 1e-7) -> np.ndarray:
    """(nperseg // 2 + 1, frames) float32 ``ln(power + eps)`` from ``scipy.signal.spectrogram`` (its defaults)."""
    from scipy.signal import spectrogram

    if x.size < nperseg:
        x = np.pad(x, (0, nperseg - x.size))
    _, _, power = spectrogram(x, rate, nperseg=nperseg, noverlap=noverlap)
    return np.log(power + eps).astype(np.float32)


def fit_frames(x: np.ndarray, frames: int, axis: int) -> np.ndarray:
    """Crop to the first `frames` along `axis`, or pad with the array's minimum."""
    n = x.shape[axis]
    if n >= frames:
        return np.take(x, np.arange(frames), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, frames - n)
    return np.pad(x, pad, constant_values=float(x.min()))


def ks_logmel(path, frames: int = KS_FRAMES, rate: int = RATE) -> np.ndarray:
    """wav file -> (frames, 128) float32 log-mel (Kinetics-Sounds, MELD)."""
    x, sr = read_wav(path)
    return fit_frames(log_mel(resample(x, sr, rate), rate), frames, axis=0)


def mmd_spectrogram(path, frames: int = MMD_FRAMES, rate: int = RATE, seconds: float = MMD_SECONDS) -> np.ndarray:
    """wav file -> (257, frames) float32 log spectrogram (MM-Debiased)."""
    x, sr = read_wav(path)
    x = resample(x, sr, rate)
    n = int(round(seconds * rate))
    if x.size < n:
        x = np.tile(x, -(-n // x.size))
    return fit_frames(log_spectrogram(x[:n], rate), frames, axis=1)
