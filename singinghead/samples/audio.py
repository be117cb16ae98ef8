"""Offline singing and accompaniment synthesis for the embedded sample session.

No TTS engine, no network, bit-identical on every machine: a source–filter singer (harmonic
glottal source with vibrato, shaped by vowel formants, per-note attack/release) and a
drum + bass + pad accompaniment played like a band (humanised, changing bar by bar: no loop).
The note envelope × vowel openness is the mouth-opening ground truth that animates the face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

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
    midi = uniform_filter1d(midi, 2 * k + 1, mode="nearest")  # running mean, edges held
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


#: Per bar: which eighth-note steps get a kick / snare (several grooves, chosen bar by bar).
GROOVES = (
    ((0, 4), (2, 6)),
    ((0, 3, 4), (2, 6)),
    ((0, 5), (2, 6, 7)),
    ((0, 2, 4, 5), (6,)),
)
#: Chord progressions as semitones above the song's root (changed every bar).
PROGRESSIONS = ((0, 5, 7, 5), (0, 9, 5, 7), (0, 7, 9, 5), (0, 3, 5, 7))


def _hit(kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One drum hit, synthesised afresh (no two hits are the same samples)."""
    t = np.arange(int(0.3 * sr)) / sr
    if kind == "kick":
        f0 = rng.uniform(45, 58)
        return np.sin(2 * np.pi * (f0 + rng.uniform(60, 100) * np.exp(-t * 40)) * t) * np.exp(-t * rng.uniform(14, 22))
    if kind == "snare":
        body = np.sin(2 * np.pi * rng.uniform(170, 210) * t) * np.exp(-t * 25) * 0.3
        return (rng.standard_normal(len(t)) * np.exp(-t * rng.uniform(22, 35)) * 0.5 + body)
    if kind == "tom":
        f0 = rng.uniform(90, 160)
        return np.sin(2 * np.pi * f0 * (1 + 0.3 * np.exp(-t * 20)) * t) * np.exp(-t * 12) * 0.7
    return np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t * rng.uniform(60, 120)) * 0.15  # hi-hat


def accompaniment(duration_s: float, sr: int, bpm: float, notes: list[Note], rng: np.random.Generator) -> np.ndarray:
    """Stereo drums, bass and pad played like a band, not a loop: every hit synthesised afresh with
    its own velocity and timing (±10 ms), the groove changing bar by bar with tom fills every
    fourth bar, a chord progression changing per bar that the bass walks through (with passing
    notes and octave jumps), and a pad that follows the chords with a slow swell and detune. A
    repetition-based separator (REPET) gets no exact repeat to lean on."""
    n = int(round(duration_s * sr))
    beat = 60.0 / bpm
    eighth = beat / 2
    out = np.zeros(n)
    pad = np.zeros(n)
    root = 45 + (int(notes[0].midi) % 12 if notes else 0)
    bar_s = 8 * eighth
    progression = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]

    def add(sound: np.ndarray, at_s: float, gain: float, into: np.ndarray = out) -> None:
        a = int(round(at_s * sr))
        if 0 <= a < n:
            b = min(a + len(sound), n)
            into[a:b] += gain * sound[: b - a]

    for bar in range(int(np.ceil(duration_s / bar_s))):
        t0 = bar * bar_s
        if bar % 4 == 0:
            progression = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
        chord = progression[bar % 4]
        kicks, snares = GROOVES[rng.integers(len(GROOVES))]
        fill = bar % 4 == 3
        for step in range(8):
            at = t0 + step * eighth
            jitter = lambda: rng.normal(0, 0.006)  # noqa: E731 (humanised timing, ≈ ±10 ms)
            if fill and step >= 4:
                for k in range(2):  # sixteenth-note tom roll down the kit
                    add(_hit("tom", sr, rng), at + k * eighth / 2 + jitter(), rng.uniform(0.5, 0.9))
                continue
            if step in kicks:
                add(_hit("kick", sr, rng), at + jitter(), rng.uniform(0.75, 1.0))
            if step in snares:
                add(_hit("snare", sr, rng), at + jitter(), rng.uniform(0.6, 1.0))
            elif rng.random() < 0.12:  # ghost note
                add(_hit("snare", sr, rng), at + jitter(), rng.uniform(0.1, 0.25))
            if rng.random() < 0.9:
                add(_hit("hat", sr, rng), at + jitter(), rng.uniform(0.4, 1.0) * (1.0 if step % 2 == 0 else 0.6))
        # bass: the chord's root on the beats, sometimes a fifth, an octave or a passing note
        for b in range(4):
            at = t0 + b * beat + rng.normal(0, 0.005)
            interval = chord + (0, 7, 12, 2, -2)[rng.choice(5, p=(0.55, 0.15, 0.1, 0.1, 0.1))]
            length = beat * rng.uniform(0.5, 0.95)
            tb = np.arange(int(length * sr)) / sr
            f = 440 * 2 ** ((root + interval - 69) / 12)
            tone = np.sin(2 * np.pi * f * tb) + 0.3 * np.sin(4 * np.pi * f * tb)
            add(tone * np.exp(-tb * rng.uniform(2, 5)) * np.minimum(1, (length - tb) / 0.01), at,
                0.22 * rng.uniform(0.7, 1.0))
        # pad: the bar's chord, voiced a little differently each time, slowly detuned
        tp = np.arange(int(bar_s * sr) + int(0.05 * sr)) / sr
        voicing = [chord + 24 + k + 12 * (rng.random() < 0.3) for k in (0, 4 if rng.random() < 0.6 else 3, 7)]
        tone = sum(np.sin(2 * np.pi * 440 * 2 ** ((root + v - 69) / 12) * (1 + 0.002 * rng.standard_normal()) * tp)
                   for v in voicing)
        fade = np.minimum(1, np.minimum(tp, tp[-1] - tp) / 0.05)
        add(tone * fade, t0, 1.0, pad)
    t = np.arange(n) / sr
    pad *= 0.03 + 0.02 * np.sin(2 * np.pi * t / rng.uniform(5, 9) + rng.uniform(0, 6))  # a slow swell
    out += pad
    out /= max(np.abs(out).max(), 1e-9)
    left, right = 0.35 * out, 0.35 * np.roll(out, int(0.0007 * sr))
    return np.stack([left, right], axis=1).astype(np.float32)
