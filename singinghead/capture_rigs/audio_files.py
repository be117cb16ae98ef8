"""Microphone WAVs and downloaded songs as float PCM.

The microphone's dry vocal is a WAV/FLAC read with libsndfile (exact sample counts, block
streaming). Songs come in any format FFmpeg decodes (mp3, m4a, flac, ...) and are decoded with
PyAV. Both are streamed in blocks so a take of any length costs a few MB of memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from singinghead.schemas.artifacts import AudioProbe
from singinghead.schemas.errors import InputError


def _require(path: Path) -> Path:
    if not path.is_file():
        raise InputError(path, "audio file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "audio file is empty")
    return path


def probe_audio(path: str | Path) -> AudioProbe:
    """Sample rate, channels and exact length; libsndfile first, FFmpeg for everything else."""
    path = _require(Path(path))
    try:
        info = sf.info(str(path))
        if info.frames <= 0:
            raise InputError(path, "audio file has zero samples")
        return AudioProbe(path=str(path), codec=info.format.lower() + "/" + info.subtype.lower(),
                          sample_rate=info.samplerate, channels=info.channels, frames=info.frames,
                          duration_s=info.frames / info.samplerate)
    except sf.LibsndfileError:
        pass
    frames, rate, channels, codec = 0, 0, 0, ""
    for block, sr in _decode_av(path, None):
        frames += len(block)
        rate, channels = sr, block.shape[1]
    if frames == 0:
        raise InputError(path, "audio file has zero samples")
    with av.open(str(path)) as container:
        codec = container.streams.audio[0].codec_context.name
    return AudioProbe(path=str(path), codec=codec, sample_rate=rate, channels=channels, frames=frames,
                      duration_s=frames / rate)


def _decode_av(path: Path, sample_rate: int | None) -> Iterator[tuple[np.ndarray, int]]:
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise InputError(path, f"cannot open as audio: {exc}") from None
    with container:
        if not container.streams.audio:
            raise InputError(path, "no audio stream")
        stream = container.streams.audio[0]
        rate = sample_rate or stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout.name, rate=rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().T.copy(), rate
            for out in resampler.resample(None):
                yield out.to_ndarray().T.copy(), rate
        except av.error.FFmpegError as exc:
            raise InputError(path, f"cannot decode audio: {exc}") from None


def iter_blocks(path: str | Path, block_s: float = 10.0, sample_rate: int | None = None
                ) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (float32 samples × channels, sample rate) blocks of about `block_s` seconds."""
    path = _require(Path(path))
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError:
        info = None
    if info is not None and (sample_rate is None or sample_rate == info.samplerate):
        for block in sf.blocks(str(path), blocksize=int(block_s * info.samplerate), dtype="float32",
                               always_2d=True):
            yield block, info.samplerate
        return
    yield from _decode_av(path, sample_rate)


def read_audio(path: str | Path, sample_rate: int | None = None, mono: bool = False) -> tuple[np.ndarray, int]:
    """Whole file as float32 (samples × channels, or samples if mono). For songs and segments,
    which are minutes long; long takes should use `iter_blocks`."""
    blocks, rate = [], 0
    for block, block_rate in iter_blocks(path, sample_rate=sample_rate):
        blocks.append(block)
        rate = block_rate
    if not blocks:
        raise InputError(path, "audio file has zero samples")
    pcm = np.concatenate(blocks).astype(np.float32)
    return (pcm.mean(axis=1) if mono else pcm), rate


def level_stats(path: str | Path, clip_level: float = 0.999) -> dict[str, float]:
    """Peak, RMS (dBFS) and the fraction of clipped samples, streamed."""
    peak, sq, n, clipped = 0.0, 0.0, 0, 0
    for block, _ in iter_blocks(path):
        a = np.abs(block)
        peak = max(peak, float(a.max(initial=0.0)))
        sq += float(np.square(block, dtype=np.float64).sum())
        n += block.size
        clipped += int((a >= clip_level).sum())
    rms = (sq / max(n, 1)) ** 0.5
    return {
        "peak": peak,
        "rms_dbfs": float(20 * np.log10(max(rms, 1e-12))),
        "peak_dbfs": float(20 * np.log10(max(peak, 1e-12))),
        "clipped_ratio": clipped / max(n, 1),
    }
