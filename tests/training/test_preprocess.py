"""fastshap_train.preprocess on generated signals: wav reading, resampling, the KS log-mel and the MM-Debiased
spectrogram, frame / audio extraction through ffmpeg (a stand-in script always, the real program where it
is installed), and the command line."""

import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import spectrogram

from fastshap_train.preprocess import (
    AudioFileError,
    FFmpegError,
    FFmpegNotFound,
    extract_audio,
    extract_frames,
    find_ffmpeg,
    ks_logmel,
    log_mel,
    mel_filterbank,
    mmd_spectrogram,
    read_wav,
    resample,
)
from fastshap_train.preprocess.__main__ import main as preprocess_main


def tone(freq, seconds, rate, amplitude=0.5, start=0.0, stop=None):
    t = np.arange(int(round(seconds * rate))) / rate
    x = amplitude * np.sin(2 * np.pi * freq * t)
    if stop is not None or start:
        x[(t < start) | (t >= (stop if stop is not None else seconds))] = 0
    return x


def write_int16(path, x, rate):
    wavfile.write(path, rate, (x * 32767).astype(np.int16))
    return path


def mel_centres(n_mels=128, n_fft=512, rate=16000):
    fb = mel_filterbank(n_mels, n_fft, rate)
    return (fb * np.arange(fb.shape[1])).sum(1) / fb.sum(1) * rate / n_fft


# ------------------------------------------------------------------------------------------------------
# audio


@pytest.mark.filterwarnings("ignore::scipy.io.wavfile.WavFileWarning")  # the broken file's chunks
def test_read_wav_formats(tmp_path):
    x = tone(440, 0.1, 8000)
    write_int16(tmp_path / "a.wav", x, 8000)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and y.dtype == np.float32 and np.allclose(y, x, atol=1e-4)
    wavfile.write(tmp_path / "u8.wav", 8000, np.round(x * 127 + 128).astype(np.uint8))
    assert np.allclose(read_wav(tmp_path / "u8.wav")[0], x, atol=1e-2)
    stereo = np.stack([x, -x / 2], axis=1).astype(np.float32)
    wavfile.write(tmp_path / "st.wav", 8000, stereo)
    assert np.allclose(read_wav(tmp_path / "st.wav")[0], x / 4, atol=1e-6)  # channels averaged
    with pytest.raises(AudioFileError, match="missing.wav does not exist"):
        read_wav(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(AudioFileError, match="bad.wav is not a readable wav file"):
        read_wav(tmp_path / "bad.wav")


def test_resample_keeps_the_frequency():
    y = resample(tone(1000, 1.0, 44100).astype(np.float32), 44100, 16000)
    assert y.shape == (16000,) and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y[1000:-1000]))
    assert abs(np.argmax(spectrum) * 16000 / (y.size - 2000) - 1000) < 2


def test_mel_filterbank_layout():
    fb = mel_filterbank(128, 512, 16000)
    assert fb.shape == (128, 257) and fb.dtype == np.float32
    assert (fb.sum(1) > 0).all() and fb.max() <= 1.0 + 1e-6  # no empty filter
    centres = mel_centres()
    # Low filters are narrower than the 31.25 Hz bin spacing, so some share a bin; above that they spread.
    assert np.all(np.diff(centres) >= 0) and np.all(np.diff(centres[20:]) > 0)
    assert 20 < centres[0] < 100 and 7000 < centres[-1] < 8000
    mel = 1127 * np.log1p(centres / 700)  # centres equally spaced on the mel scale, up to bin rounding
    assert np.std(np.diff(mel[40:])) < 0.2 * np.mean(np.diff(mel[40:]))


def test_log_mel_frames_and_tones():
    rate = 16000
    x = tone(500, 2.0, rate) + tone(3000, 2.0, rate, start=1.0)
    m = log_mel(x, rate)
    assert m.shape == (1 + (2 * rate - 400) // 160, 128) and m.dtype == np.float32
    centres = mel_centres()
    first, second = m[10:90].mean(0), m[110:190].mean(0)
    assert abs(centres[np.argmax(first)] - 500) < 30
    assert abs(centres[np.argmax(second)] - 3000) < 80
    j = int(np.argmin(np.abs(centres - 3000)))
    assert second[j] - first[j] > 5  # the 3 kHz tone starts at 1 s (natural-log units)


def test_ks_logmel_is_1024_by_128(tmp_path):
    noise = np.random.default_rng(0).normal(0, 1e-3, 441000)  # not digital silence: no frame sits at the minimum
    path = write_int16(tmp_path / "clip.wav", tone(1000, 10.0, 44100, start=2.0, stop=3.0) + noise, 44100)
    m = ks_logmel(path)
    assert m.shape == (1024, 128) and m.dtype == np.float32
    computed = 1 + (10 * 16000 - 400) // 160  # 998 frames, then padding with the minimum
    assert np.all(m[computed:] == m.min()) and np.any(m[computed - 1] > m.min())
    j = int(np.argmin(np.abs(mel_centres() - 1000)))
    assert m[210:290, j].mean() - m[400:900, j].mean() > 5  # the tone sits at 2-3 s (10 ms hop)
    long = ks_logmel(write_int16(tmp_path / "long.wav", tone(1000, 12.0, 16000), 16000))
    assert long.shape == (1024, 128) and np.all(long[-1] > long.min() - 1)  # cropped: no padding rows
    assert np.isfinite(long).all()


def test_mmd_spectrogram_is_257_by_1003_like_scipy(tmp_path):
    x = tone(2000, 10.0, 16000)
    path = write_int16(tmp_path / "a.wav", x, 16000)
    s = mmd_spectrogram(path)
    assert s.shape == (257, 1003) and s.dtype == np.float32
    samples = read_wav(path)[0]
    expected = np.log(spectrogram(samples, 16000, nperseg=512, noverlap=353)[2] + 1e-7)[:, :1003]
    assert np.allclose(s, expected, atol=1e-4)
    assert np.argmax(s.mean(1)) == 64  # 2000 Hz / (16000 / 512) Hz per bin
    # A 4 s clip is repeated to 10 s: its 1-s burst comes back at 4-5 s and 8-9 s.
    burst = write_int16(tmp_path / "b.wav", tone(2000, 4.0, 16000, stop=1.0), 16000)
    b = mmd_spectrogram(burst)[64]
    frame = lambda sec: int(sec * 16000 / 159)  # noqa: E731
    assert b[frame(4.5)] - b[frame(2.5)] > 5 and b[frame(8.5)] - b[frame(6.5)] > 5


# ------------------------------------------------------------------------------------------------------
# video: errors and command lines through a stand-in ffmpeg


def fake_ffmpeg(tmp_path, fail=False):
    """A script that records its arguments and writes 3 frames to the output pattern (or fails)."""
    from PIL import Image

    template = tmp_path / "template.jpg"
    Image.new("RGB", (8, 6), (200, 10, 10)).save(template)
    script = tmp_path / "fake-ffmpeg"
    body = f"""#!{sys.executable}
import shutil, sys
open({str(tmp_path / "args.txt")!r}, "w").write("\\n".join(sys.argv[1:]))
if {fail!r}:
    sys.stderr.write("moov atom not found\\n"); sys.exit(1)
out = sys.argv[-1]
if out.endswith(".wav"):
    shutil.copy({str(template)!r}, out)
else:
    for k in (1, 2, 3, 10):
        shutil.copy({str(template)!r}, out.replace("%d", str(k)))
"""
    script.write_text(body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_missing_ffmpeg_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("FFMPEG", raising=False)
    with pytest.raises(FFmpegNotFound, match=r"not installed .*'/nonexistent/ffmpeg'.*apt-get install ffmpeg"):
        find_ffmpeg("/nonexistent/ffmpeg")
    monkeypatch.setenv("FFMPEG", str(tmp_path / "none"))
    with pytest.raises(FFmpegNotFound, match=r"from \$FFMPEG"):
        extract_frames(tmp_path / "v.mp4", tmp_path / "out")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("FFMPEG")
    with pytest.raises(FFmpegNotFound, match="from PATH"):
        extract_audio(tmp_path / "v.mp4", tmp_path / "a.wav")


def test_frames_and_audio_command_lines(tmp_path):
    exe = fake_ffmpeg(tmp_path)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    frames = extract_frames(video, tmp_path / "frames" / "clip", fps=1, ffmpeg=str(exe))
    assert [p.name for p in frames] == ["frame_00001.jpg", "frame_00002.jpg", "frame_00003.jpg", "frame_000010.jpg"]
    args = (tmp_path / "args.txt").read_text().split("\n")
    assert args[args.index("-i") + 1] == str(video) and args[args.index("-vf") + 1] == "fps=1"
    assert args[-1] == str(tmp_path / "frames" / "clip" / "frame_0000%d.jpg")
    from fastshap_train.data._media import list_frames

    assert list_frames(tmp_path / "frames" / "clip") == [p.name for p in frames]  # the loaders' order
    wav = extract_audio(video, tmp_path / "audio" / "clip.wav", rate=16000, ffmpeg=str(exe))
    args = (tmp_path / "args.txt").read_text().split("\n")
    assert wav.is_file() and args[args.index("-ar") + 1] == "16000" and args[args.index("-ac") + 1] == "1"
    with pytest.raises(FileNotFoundError, match="missing.mp4 does not exist"):
        extract_frames(tmp_path / "missing.mp4", tmp_path / "x", ffmpeg=str(exe))
    bad = fake_ffmpeg(tmp_path, fail=True)
    with pytest.raises(FFmpegError, match=r"ffmpeg failed on .*clip\.mp4 \(exit status 1\): moov atom not found"):
        extract_frames(video, tmp_path / "y", ffmpeg=str(bad))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg program is not installed")
def test_real_ffmpeg_frames_and_audio(tmp_path):
    video = tmp_path / "gen.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=10",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=1000:sample_rate=44100",
            "-t",
            "3",
            "-pix_fmt",
            "yuv420p",
            "-shortest",
            str(video),
        ],
        check=True,
    )
    frames = extract_frames(video, tmp_path / "frames")
    assert len(frames) == 3
    from PIL import Image

    assert Image.open(frames[0]).size == (64, 48)
    wav = extract_audio(video, tmp_path / "a.wav")
    x, rate = read_wav(wav)
    assert rate == 16000 and abs(x.size - 3 * 16000) < 2000
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * rate / x.size - 1000) < 5


# ------------------------------------------------------------------------------------------------------
# command line, and the loaders read what it writes


def test_cli_converts_folders_and_reports_failures(tmp_path, capsys):
    src = tmp_path / "wav"
    src.mkdir()
    write_int16(src / "s1.wav", tone(700, 3.0, 22050), 22050)
    write_int16(src / "s2.wav", tone(900, 3.0, 16000), 16000)
    (src / "broken.wav").write_bytes(b"nope")
    assert preprocess_main(["logmel", str(src), "--out", str(tmp_path / "mel")]) == 1
    err = capsys.readouterr().err
    assert "broken.wav" in err
    assert np.load(tmp_path / "mel" / "s1.npy").shape == (1024, 128)
    out = tmp_path / "spec"
    assert preprocess_main(["spectrogram", str(src / "s2.wav"), "--out", str(out), "--frames", "500"]) == 0
    assert np.load(tmp_path / "spec" / "s2.npy").shape == (257, 500)
    assert preprocess_main(["frames", str(src), "--out", str(tmp_path / "f"), "--ffmpeg", "/nonexistent/ffmpeg"]) == 2
    assert "ffmpeg is not installed" in capsys.readouterr().err


def test_loader_reads_preprocessed_audio(tmp_path):
    from fastshap_train.data import build_dataset
    from fastshap_train.data._fixtures import write_ks

    layout = write_ks(tmp_path, per_class=1, splits=("train",))
    sample = layout.samples["train"][0][0]
    wav = write_int16(tmp_path / "clip.wav", tone(1000, 10.0, 16000), 16000)
    np.save(tmp_path / "audio" / "train" / f"{sample}.npy", ks_logmel(wav))
    item = build_dataset("ks", tmp_path, "train", image_size=32)[0]
    assert item["audio"].shape == (1, 1024, 128)
    assert np.array_equal(item["audio"][0].numpy(), ks_logmel(wav))
    assert os.path.exists(tmp_path / "train_1fps_path.txt")
