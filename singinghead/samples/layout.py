"""A synthetic dataset in the public SingingHead layout: for trainer tests and the loader benchmark.

N windows of 8 s: smooth 59-d motion whose jaw and expressions follow the singing loudness,
plus a 1 Hz sway (a model can learn both, from the audio and its positional encoding); a 100-d
shape per subject, a 16 kHz singing tone with a syllable envelope, a beat-like BGM, and a small
test-pattern MP4 per window.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from singinghead.schemas import motion as layout
from singinghead.schemas import release as R
from singinghead.storage.assets import ffmpeg_exe


def write_singinghead_layout(folder: str | Path, windows: int, seed: int = 0, subjects: int = 2,
                             splits: tuple[float, float, float] = (1.0, 0.0, 0.0)) -> list[str]:
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for sub in ("video_seqs", "flame_seqs", "audio_seqs", "bgm_seqs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    clip = folder / "clip.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=128x128:rate=30",
                    "-frames:v", str(R.WINDOW_FRAMES), "-pix_fmt", "yuv420p", str(clip)], check=True)
    t_audio = np.arange(R.WINDOW_SAMPLES) / R.SAMPLE_RATE
    t = np.arange(R.WINDOW_FRAMES) / layout.FPS
    shapes = rng.normal(0, 1, (subjects, layout.SHAPE_DIM)).astype(np.float32)
    names = []
    for i in range(windows):
        subject = i % subjects
        name = f"id{subject}_{i // subjects}_0_0"
        names.append(name)
        syllable = 2.0 + rng.uniform(0, 2)
        envelope_audio = 0.5 * (1 + np.sin(2 * np.pi * syllable * t_audio + i))
        envelope = 0.5 * (1 + np.sin(2 * np.pi * syllable * t + i))
        motion = np.zeros((R.WINDOW_FRAMES, layout.MOTION_DIM), np.float32)
        # expressions: a loudness-driven part plus a 1 Hz sway (the cues a model has: audio and PPE)
        motion[:, layout.EXPRESSION] = 0.3 * envelope[:, None] * rng.normal(0, 1, 50) \
            + 0.1 * np.sin(2 * np.pi * t[:, None] + rng.uniform(0, 6, 50))
        motion[:, layout.GLOBAL_ORIENT] = 0.1 * np.sin(2 * np.pi * t[:, None] + rng.uniform(0, 6, 3))
        motion[:, layout.JAW.start] = 0.25 * envelope
        with open(folder / "flame_seqs" / f"{name}.pkl", "wb") as fh:
            pickle.dump({"flame": motion, "shape": shapes[subject], "fps": layout.FPS}, fh)
        f0 = 180 + 40 * subject + 20 * np.sin(2 * np.pi * 0.5 * t_audio)
        voice = 0.3 * envelope_audio * np.sin(2 * np.pi * np.cumsum(f0) / R.SAMPLE_RATE)
        beats = (np.sin(2 * np.pi * 2 * t_audio) > 0.95).astype(float)
        music = 0.2 * rng.normal(0, 1, len(t_audio)) * beats + 0.05 * np.sin(2 * np.pi * 110 * t_audio)
        sf.write(folder / "audio_seqs" / f"{name}.wav", voice.astype(np.float32), R.SAMPLE_RATE, subtype="FLOAT")
        sf.write(folder / "bgm_seqs" / f"{name}_bgm.wav", music.astype(np.float32), R.SAMPLE_RATE, subtype="FLOAT")
        shutil.copyfile(clip, folder / "video_seqs" / f"{name}.mp4")
    clip.unlink()
    edges = np.cumsum(splits) * windows
    for k, split in enumerate(R.SPLITS):
        lo, hi = int(round(edges[k - 1])) if k else 0, int(round(edges[k]))
        (folder / f"{split}.txt").write_text("".join(f"{n}\n" for n in names[lo:hi]))
    return names
