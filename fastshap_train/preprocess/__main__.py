"""``python -m fastshap_train.preprocess``: batch conversion of wav / video files into the loaders' layouts.

    logmel       wav -> OUT/<stem>.npy (frames, 128) log-mel        (ks: audio/<split>/, meld: audio/<split>/)
    spectrogram  wav -> OUT/<stem>.npy (257, frames) spectrogram    (mm-debiased: audio/)
    frames       video -> OUT/<stem>/frame_0000<k>.jpg at --fps     (visual/..., ucf101 rgb/)
    audio        video -> OUT/<stem>.wav, mono 16-bit at --rate

INPUT is files or folders (searched recursively for the usual extensions). Existing outputs are kept
unless --overwrite. A file that fails is reported and the others go on; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastshap_train.dependencies import reports_missing_packages

AUDIO_EXT = {".wav"}
VIDEO_EXT = {".mp4", ".avi", ".mkv", ".webm", ".flv", ".mov", ".m4v", ".mpg", ".mpeg"}


def _inputs(paths, extensions) -> list:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in extensions and f.is_file())
        else:
            out.append(p)
    return out


def _positive(convert, expected: str, most=None, why: str = ""):
    """An argparse type: `convert(text)`, which must be finite and > 0 (0 frames writes an empty array, 0 jobs
    cannot convert anything, 0 fps samples nothing), and at most `most` (`why` says why) if given."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {text}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most} ({why}), got {text}")
        return value

    return parse


_positive_int = _positive(int, "an integer")
_positive_float = _positive(float, "a number")
#: 2^20 time frames is ~3 hours of audio at the 10 ms hop; the padded (257, frames) float32 spectrogram is
#: already 1 GiB. A larger --frames is a typo that would exhaust memory padding every file.
MAX_FRAMES = 2**20
_frames = _positive(int, "an integer", MAX_FRAMES, "about 3 hours of audio a file")


def _jobs(text: str) -> int:
    from fastshap_train.config import cpu_cap

    cap, cpus = cpu_cap()
    return _positive(int, "an integer", cap, f"4 x the {cpus} CPUs")(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastshap_train.preprocess",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("logmel", "wav -> log-mel (frames, 128)"),
        ("spectrogram", "wav -> (257, frames)"),
        ("frames", "video -> 1-fps jpg frames"),
        ("audio", "video -> mono wav"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("inputs", nargs="+", help="files or folders")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--overwrite", action="store_true", help="redo files whose output exists")
        p.add_argument("--jobs", type=_jobs, default=1, help="files converted in parallel")
        if name in ("logmel", "spectrogram"):
            p.add_argument(
                "--frames",
                type=_frames,
                default=1024 if name == "logmel" else 1003,
                help="time frames after padding / cropping",
            )
        if name in ("frames", "audio"):
            p.add_argument("--ffmpeg", default=None, help="ffmpeg executable (default: $FFMPEG or ffmpeg on PATH)")
        if name == "frames":
            p.add_argument("--fps", type=_positive_float, default=1.0, help="frames per second")
        if name == "audio":
            p.add_argument("--rate", type=_positive_int, default=16000, help="sample rate of the wav files")
    return parser


@reports_missing_packages("python -m fastshap_train.preprocess")
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fastshap_train.preprocess import audio, video

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a path under a file, no permission
        parser.error(f"--out {out}: cannot create the directory: {exc.strerror or exc}")
    if args.command in ("frames", "audio"):
        try:
            video.find_ffmpeg(args.ffmpeg)
        except video.FFmpegNotFound as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    files = _inputs(args.inputs, AUDIO_EXT if args.command in ("logmel", "spectrogram") else VIDEO_EXT)

    def convert(src: Path):
        import numpy as np

        if args.command == "logmel":
            dst = out / f"{src.stem}.npy"
            if args.overwrite or not dst.exists():
                np.save(dst, audio.ks_logmel(src, frames=args.frames))
        elif args.command == "spectrogram":
            dst = out / f"{src.stem}.npy"
            if args.overwrite or not dst.exists():
                np.save(dst, audio.mmd_spectrogram(src, frames=args.frames))
        elif args.command == "frames":
            dst = out / src.stem
            if args.overwrite or not any(dst.glob("frame_*.jpg")):
                video.extract_frames(src, dst, fps=args.fps, ffmpeg=args.ffmpeg)
        else:
            dst = out / f"{src.stem}.wav"
            if args.overwrite or not dst.exists():
                video.extract_audio(src, dst, rate=args.rate, ffmpeg=args.ffmpeg)
        return dst

    failed = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [(src, pool.submit(convert, src)) for src in files]
        for src, fut in futures:
            try:
                fut.result()
            except (OSError, ValueError, RuntimeError) as exc:
                failed += 1
                print(f"failed: {src}: {exc}", file=sys.stderr)
    print(f"{args.command}: {len(files) - failed} of {len(files)} files into {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
