"""Offline singing and accompaniment synthesis for the embedded sample session.

No TTS engine, no network, bit-identical on every machine: a source–filter singer (harmonic
glottal source with vibrato, shaped by vowel formants, per-note attack/release) and a
drum + bass + pad accompaniment on a tempo grid. The note envelope × vowel openness is the
mouth-opening ground truth that animates the face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (F1, F2, F3) in Hz and how far the jaw opens for the vowel (0..1).
VOWELS = {
    "a": ((800, 1200, 2500), 1.0),
    "o": ((500, 900, 2400), 0.75),
    "e": ((450, 1900, 2600), 0.6),
    "u": ((330, 800, 2300), 0.45),
    "i": ((300, 2300, 3000), 0.35),
}


@dataclass(frozen=True)
class Note:
    start_s: float
    dur_s: float
    midi: float
    vowel: str


def melody(duration_s: float, bpm: float, rng: np.random.Generator) -> list[Note]:
    """Phrases of 4–8 beats on a pentatonic scale, separated by 1–2 beat rests."""
    beat = 60.0 / bpm
    scale = np.array([0, 2, 4, 7, 9, 12, 14])
    root = 57 + int(rng.integers(0, 5))  # A3..C#4
    notes: list[Note] = []
    t = beat * 2
    while t < duration_s - beat:
        phrase_beats = int(rng.integers(4, 9))
        end = min(t + phrase_beats * beat, duration_s - beat)
        while t < end - 0.25 * beat:
            length = beat * float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
            length = min(length, end - t)
            vowel = str(rng.choice(list(VOWELS)))
            notes.append(Note(t, length, float(root + rng.choice(scale)), vowel))
            t += length
        t = end + beat * float(rng.choice([1.0, 1.5, 2.0]))
    return notes


def _envelope(n: int, sr: int, notes: list[Note], attack: float, release: float, shift_s) -> np.ndarray:
    env = np.zeros(n, dtype=np.float64)
    for i, note in enumerate(notes):
        start = note.start_s + shift_s[i]
        a, b = int(round(start * sr)), int(round((start + note.dur_s * 0.92) * sr))
        a, b = max(a, 0), min(b, n)
        if b <= a:
            continue
        t = np.arange(b - a) / sr
        seg = np.minimum(1.0, t / attack)
        tail = np.clip(((b - a) / sr - t) / release, 0.0, 1.0)
        env[a:b] = np.maximum(env[a:b], seg * tail)
    return env


def sing(
    notes: list[Note],
    duration_s: float,
    sr: int,
    timbre_shift: float = 1.0,
    timing_jitter_s: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a voice singing `notes`; returns (mono float32 signal, mouth-opening 0..1).

    `timbre_shift` scales the formants (another singer); `timing_jitter_s` is the standard
    deviation of per-note timing deviations (a singer following a song is never exact); they
    average to zero over the take, which is what makes "the" offset of a take well defined.
    """
    n = int(round(duration_s * sr))
    rng = rng or np.random.default_rng(0)
    shifts = rng.normal(0.0, timing_jitter_s, len(notes)) if timing_jitter_s else np.zeros(len(notes))
    if len(shifts):
        shifts -= shifts.mean()  # early here, late there: on average the singer is on the beat
    env = _envelope(n, sr, notes, attack=0.04, release=0.08, shift_s=shifts)

    # Per-sample f0 (with 5.5 Hz vibrato) and formants, held through rests for continuity.
    midi = np.full(n, notes[0].midi if notes else 60.0)
    formants = np.tile(np.array(VOWELS["a"][0], dtype=np.float64), (n, 1))
    opening = np.zeros(n)
    for i, note in enumerate(notes):
        a = max(int(round((note.start_s + shifts[i]) * sr)), 0)
        midi[a:] = note.midi
        formants[a:] = np.array(VOWELS[note.vowel][0]) * timbre_shift
        opening[a:] = VOWELS[note.vowel][1]
    t = np.arange(n) / sr
    midi = midi + 0.3 * np.sin(2 * np.pi * 5.5 * t) * np.clip(env, 0, 1)
    # Glide between notes (portamento, 30 ms) by smoothing the pitch track.
    k = int(0.03 * sr)
    midi = np.convolve(np.pad(midi, (k, k), mode="edge"), np.ones(2 * k + 1) / (2 * k + 1), "valid")
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    phase = 2 * np.pi * np.cumsum(f0) / sr

    voice = np.zeros(n)
    bandwidths = np.array([80.0, 100.0, 120.0])
    for h in range(1, 41):
        fh = h * f0
        alive = fh < min(7500.0, sr / 2 - 500)
        if not alive.any():
            break
        gain = np.zeros(n)
        for j in range(3):
            gain += 1.0 / (1.0 + ((fh - formants[:, j]) / bandwidths[j]) ** 2)
        gain *= h ** -0.8 * alive
        voice += gain * np.sin(h * phase)
    voice += 0.01 * rng.standard_normal(n) * env  # breath
    voice *= env
    voice /= max(np.abs(voice).max(), 1e-9)
    mouth = env * opening
    return (0.5 * voice).astype(np.float32), mouth.astype(np.float32)


def accompaniment(duration_s: float, sr: int, bpm: float, notes: list[Note], rng: np.random.Generator) -> np.ndarray:
    """Stereo drums (kick, snare, hi-hat), bass on the beat and a sustained pad."""
    n = int(round(duration_s * sr))
    beat = 60.0 / bpm
    out = np.zeros(n)
    t_hit = np.arange(int(0.25 * sr)) / sr
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-t_hit * 40)) * t_hit) * np.exp(-t_hit * 18)
    snare = rng.standard_normal(len(t_hit)) * np.exp(-t_hit * 30) * 0.5
    hat = np.diff(rng.standard_normal(len(t_hit) + 1)) * np.exp(-t_hit * 90) * 0.15
    root = 45 + (int(notes[0].midi) % 12 if notes else 0)
    for i, start in enumerate(np.arange(0, duration_s, beat / 2)):
        a = int(start * sr)
        for sound, on in ((kick, i % 4 == 0), (snare, i % 4 == 2), (hat, True)):
            if on:
                b = min(a + len(sound), n)
                out[a:b] += sound[: b - a]
        if i % 2 == 0:  # bass note per beat
            b = min(a + int(beat * sr), n)
            tb = np.arange(b - a) / sr
            f = 440 * 2 ** ((root + (0, 5, 7, 5)[(i // 2) % 4] - 69) / 12)
            out[a:b] += 0.25 * np.sin(2 * np.pi * f * tb) * np.exp(-tb * 3)
    t = np.arange(n) / sr
    pad = sum(np.sin(2 * np.pi * 440 * 2 ** ((root + 24 + k - 69) / 12) * t) for k in (0, 4, 7))
    out += 0.04 * pad
    out /= max(np.abs(out).max(), 1e-9)
    left, right = 0.35 * out, 0.35 * np.roll(out, int(0.0007 * sr))
    return np.stack([left, right], axis=1).astype(np.float32)
