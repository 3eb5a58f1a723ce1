"""From raw media to the arrays and frame folders the dataset loaders read.

* audio (:mod:`fastshap_train.preprocess.audio`, SciPy): wav -> ``(1024, 128)`` log-mel for Kinetics-Sounds and
  MELD (:func:`ks_logmel`); wav -> ``(257, 1003)`` log spectrogram for MM-Debiased (:func:`mmd_spectrogram`).
* video (:mod:`fastshap_train.preprocess.video`, the ffmpeg program): video -> 1-fps ``frame_0000<k>.jpg``
  frames (:func:`extract_frames`), video -> 16 kHz mono wav (:func:`extract_audio`).

Command line: ``python -m fastshap_train.preprocess {logmel,spectrogram,frames,audio} INPUT... --out DIR``.
"""

from fastshap_train.preprocess.audio import (  # noqa: F401
    AudioFileError,
    fit_frames,
    ks_logmel,
    log_mel,
    log_spectrogram,
    mel_filterbank,
    mmd_spectrogram,
    read_wav,
    resample,
)
from fastshap_train.preprocess.video import (  # noqa: F401
    FFmpegError,
    FFmpegNotFound,
    extract_audio,
    extract_frames,
    find_ffmpeg,
)

__all__ = [
    "AudioFileError",
    "FFmpegError",
    "FFmpegNotFound",
    "extract_audio",
    "extract_frames",
    "find_ffmpeg",
    "fit_frames",
    "ks_logmel",
    "log_mel",
    "log_spectrogram",
    "mel_filterbank",
    "mmd_spectrogram",
    "read_wav",
    "resample",
]
