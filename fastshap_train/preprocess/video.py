"""Video preprocessing with the ffmpeg program: 1-fps frames and 16 kHz mono wav tracks.

ffmpeg is found as the ``ffmpeg`` argument, else the ``FFMPEG`` environment variable, else ``ffmpeg`` on
PATH; when none exists :class:`FFmpegNotFound` says so and how to install it. Frames are written as
``frame_0000<k>.jpg`` (k = 1, 2, ...: the authors' ``'frame_0000' + str(k)`` names, which the loaders
read; they order frames by k).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

FRAME_PATTERN = "frame_0000%d.jpg"


class FFmpegNotFound(RuntimeError):
    """No ffmpeg executable."""


class FFmpegError(RuntimeError):
    """ffmpeg failed on a file; the message names it and ends with ffmpeg's own error output."""


def find_ffmpeg(ffmpeg: str | None = None) -> str:
    """The path of the ffmpeg executable to use, or FFmpegNotFound with what was tried."""
    candidate = ffmpeg or os.environ.get("FFMPEG") or "ffmpeg"
    found = shutil.which(candidate)
    if found is None:
        source = "the ffmpeg argument" if ffmpeg else ("$FFMPEG" if os.environ.get("FFMPEG") else "PATH")
        raise FFmpegNotFound(
            f"ffmpeg is not installed (no executable {candidate!r}, from {source}): install it (e.g. `apt-get "
            "install ffmpeg`, `conda install ffmpeg`) or pass the path of an ffmpeg executable"
        )
    return found


def _run(cmd: list, source: Path, timeout: float | None) -> None:
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise FFmpegError(f"ffmpeg took more than {timeout} s on {source}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        raise FFmpegError(f"ffmpeg failed on {source} (exit status {proc.returncode}): " + " | ".join(tail))


def extract_frames(
    video, out_dir, fps: float = 1.0, ffmpeg: str | None = None, quality: int = 2, timeout: float | None = 600
) -> list:
    """Frames of `video` at `fps` into `out_dir` (created) as frame_0000<k>.jpg; returns their paths in order.

    `quality` is ffmpeg's JPEG ``-q:v`` (2 = high). Existing frames in `out_dir` are replaced.
    """
    exe = find_ffmpeg(ffmpeg)
    video, out_dir = Path(video), Path(out_dir)
    if not video.is_file():
        raise FileNotFoundError(f"video {video} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("frame_*.jpg"):
        old.unlink()
    _run(
        [
            exe,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(video),
            "-vf",
            f"fps={fps}",
            "-q:v",
            str(int(quality)),
            str(out_dir / FRAME_PATTERN),
        ],
        video,
        timeout,
    )
    frames = sorted(out_dir.glob("frame_*.jpg"), key=lambda p: int(p.stem[len("frame_") :]))
    if not frames:
        raise FFmpegError(f"ffmpeg wrote no frame for {video} (no video stream, or shorter than 1 / fps?)")
    return frames


def extract_audio(video, wav_path, rate: int = 16000, ffmpeg: str | None = None, timeout: float | None = 600) -> Path:
    """The audio track of `video` as a mono 16-bit PCM wav at `rate` Hz."""
    exe = find_ffmpeg(ffmpeg)
    video, wav_path = Path(video), Path(wav_path)
    if not video.is_file():
        raise FileNotFoundError(f"video {video} does not exist")
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            exe,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(video),
            "-vn",
            "-ac",
            "1",
            "-ar",
            str(int(rate)),
            "-acodec",
            "pcm_s16le",
            str(wav_path),
        ],
        video,
        timeout,
    )
    if not wav_path.is_file():
        raise FFmpegError(f"ffmpeg wrote no audio for {video}")
    return wav_path
