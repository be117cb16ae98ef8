"""Synchronisation: measure the offsets the capture log only claims.

(a) Dry vocal vs song. The singer sang along with the song, so the dry vocal and the song's
separated vocal share a melody and a syllable rhythm, not a waveform. Both are reduced to
features a different voice keeps — a log-loudness onset envelope and a 12-d chroma at 100 Hz —
and cross-correlated over every lag (FFT). At the best lag each sung note onset (1 kHz onset
envelope) is matched to the nearest onset of the song's vocal within 60 ms, and the trimmed
mean of those differences refines the offset: the singer's early and late notes average out.
Confidence = correlation at the peak and its ratio to the best lag more than 250 ms away.

(b) Mic vs video. The Kinect records no audio, so the check is audio-visual: the mouth opening
from dense landmarks on every portrait frame against the dry vocal's loudness envelope, searched
around the capture log's offset (±0.5 s, 1 ms steps, sub-frame by interpolating the envelope).
The estimate is `confident` only for a peak inside the search range with a correlation ≥ 0.4 and
a lead ≥ 0.1 over every lag 200 ms or more away; otherwise the offset is *unverified* and the
audio step uses the log and flags it. A confident measurement that disagrees with the log by
more than one video frame replaces it, flagged as well. On real faces this envelope evidence is
weak (most takes end unverified); with SyncNet's weights configured the audio step measures the
offset with SyncNet instead (tasks.syncnet), whose confidence has the same role.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal, stats

#: What makes an audio-visual offset "measured": a real peak inside the search range whose
#: correlation and lead over every lag ≥ 200 ms away are both clear. On real talking faces the
#: mouth-opening vs loudness correlation is weak (0.2–0.3 over a few seconds) and its maximum can
#: sit anywhere, so those takes end `unverified` rather than shifted by a wrong measurement.
MIN_AV_CORRELATION = 0.4
MIN_AV_MARGIN = 0.1
#: SyncNet confidence (median − minimum distance over the search) from which an offset counts as
#: measured. The release's own in-sync example clip scores 10.0; a curve with no clear minimum (no
#: face, voice off-screen) scores little. 3 is a default that a lab should check on takes it knows
#: to be in sync (bench/avsync.py does this when the weights are set; they are not on this machine).
MIN_SYNCNET_CONFIDENCE = 3.0


@dataclass(frozen=True)
class OffsetEstimate:
    offset_s: float
    correlation: float  # normalised correlation at the peak (−1..1); NaN for SyncNet
    peak_ratio: float  # peak over the best lag more than 250 ms away (≥ 1 when the peak is positive; else 0)
    margin: float = float("nan")  # peak minus the best correlation ≥ 200 ms away (audio–visual)
    at_edge: bool = False  # the best lag lies on the search range's border: no peak was found
    method: str = "envelope"  # envelope | chroma+onsets (song) | syncnet
    confidence: float = float("nan")  # SyncNet: median − minimum distance over the search range
    min_distance: float = float("nan")  # SyncNet: the minimum mean distance
    windows: int = 0  # SyncNet: 0.2 s windows pooled

    @property
    def confident(self) -> bool:
        if not np.isfinite(self.offset_s) or self.at_edge:
            return False
        if self.method == "syncnet":
            return self.confidence >= MIN_SYNCNET_CONFIDENCE
        if np.isfinite(self.margin):
            return self.correlation >= MIN_AV_CORRELATION and self.margin >= MIN_AV_MARGIN
        return self.peak_ratio >= 1.5 and self.correlation > 0.1

    def evidence(self) -> str:
        """The measured evidence, for reports."""
        edge = ", best lag on the search border" if self.at_edge else ""
        if self.method == "syncnet":
            return (f"SyncNet confidence {self.confidence:.2f} (needs ≥ {MIN_SYNCNET_CONFIDENCE:g}) "
                    f"over {self.windows} windows{edge}")
        if np.isfinite(self.margin):
            return (f"mouth–loudness correlation {self.correlation:.2f} (needs ≥ {MIN_AV_CORRELATION:g}), "
                    f"margin {self.margin:.2f} (needs ≥ {MIN_AV_MARGIN:g}){edge}")
        return f"correlation {self.correlation:.2f}, peak ratio {self.peak_ratio:.2f}{edge}"

    def as_dict(self) -> dict:
        def num(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        out = {"method": self.method, "offset_s": num(self.offset_s), "confident": self.confident,
               "evidence": self.evidence()}
        if self.method == "syncnet":
            out.update(confidence=num(self.confidence), min_distance=num(self.min_distance), windows=self.windows,
                       at_edge=self.at_edge)
        else:
            out.update(correlation=num(self.correlation), peak_ratio=num(self.peak_ratio))
            if np.isfinite(self.margin):
                out.update(margin=self.margin, at_edge=self.at_edge)
        return out


def _peak_ratio(score: np.ndarray, k: int, far: np.ndarray) -> float:
    """Peak over the best far lag; 0 when the peak itself is not positive (no evidence)."""
    if not far.any():
        return float("inf")
    if score[k] <= 0:
        return 0.0
    return float(score[k] / max(score[far].max(), 1e-9))


def onset_envelope(x: np.ndarray, sr: int, rate: int) -> np.ndarray:
    """Half-wave rectified derivative of log loudness, sampled at `rate` Hz, zero-mean unit-var."""
    hop = sr // rate
    n = len(x) // hop
    power = np.square(x[: n * hop].astype(np.float64)).reshape(n, hop).mean(axis=1)
    smooth = signal.convolve(power, np.hanning(max(3, rate // 50)), mode="same")  # ~20 ms
    loud = np.log(smooth + 1e-8)
    onset = np.maximum(np.diff(loud, prepend=loud[0]), 0.0)
    return _standardise(onset)


def loudness_envelope(x: np.ndarray, sr: int, rate: int) -> np.ndarray:
    hop = sr // rate
    n = len(x) // hop
    rms = np.sqrt(np.square(x[: n * hop].astype(np.float64)).reshape(n, hop).mean(axis=1))
    return signal.convolve(rms, np.ones(max(1, rate // 30)) / max(1, rate // 30), mode="same")


def _standardise(v: np.ndarray) -> np.ndarray:
    v = v - v.mean(axis=-1, keepdims=True)
    return v / np.maximum(v.std(axis=-1, keepdims=True), 1e-12)


def _xcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """c[lag] = Σ_t a[t] · b[t + lag] for lag = 0 … len(b) − len(a) (a shorter than b)."""
    return signal.correlate(b, a, mode="valid", method="fft")


def song_offset(vocal: np.ndarray, vocal_sr: int, song_vocals: np.ndarray, song_sr: int,
                max_offset_s: float | None = None) -> OffsetEstimate:
    """Song time of the dry vocal's first sample (mic t ↔ song t + offset)."""
    import librosa

    rate = 100
    feats = []
    voice16, song16 = (librosa.resample(x.astype(np.float32), orig_sr=sr, target_sr=16000)
                       for x, sr in ((vocal, vocal_sr), (song_vocals, song_sr)))
    for x16 in (voice16, song16):
        chroma = librosa.feature.chroma_stft(y=x16, sr=16000, hop_length=160, n_fft=2048)
        env = onset_envelope(x16, 16000, rate)
        m = min(chroma.shape[1], len(env))
        feats.append((_standardise(chroma[:, :m]), env[:m]))
    (chroma_a, env_a), (chroma_b, env_b) = feats
    if len(env_a) > len(env_b):  # the song must cover the vocal; pad it with silence if not
        pad = len(env_a) - len(env_b)
        env_b = np.pad(env_b, (0, pad))
        chroma_b = np.pad(chroma_b, ((0, 0), (0, pad)))
    n = len(env_a)
    score = _xcorr(env_a, env_b) / n + sum(_xcorr(chroma_a[k], chroma_b[k]) for k in range(12)) / (12 * n)
    if max_offset_s is not None:
        score = score[: int(max_offset_s * rate) + 1]
    coarse = int(np.argmax(score))
    far = np.abs(np.arange(len(score)) - coarse) > 0.25 * rate
    ratio = _peak_ratio(score, coarse, far)

    # Refine per note: onsets of the dry vocal matched to the song vocal's nearest onset (±60 ms)
    # at the coarse lag; the trimmed mean of their differences is the offset.
    a = _onset_times(voice16) + coarse / rate
    b = _onset_times(song16)
    if len(a) == 0 or len(b) == 0:
        return OffsetEstimate(coarse / rate, float(score[coarse] / 2), ratio, method="chroma+onsets")
    diffs = b[np.abs(b[None, :] - a[:, None]).argmin(axis=1)] - a
    diffs = diffs[np.abs(diffs) <= 0.06]
    offset = coarse / rate + (float(stats.trim_mean(diffs, 0.2)) if len(diffs) >= 3 else 0.0)
    return OffsetEstimate(offset, float(score[coarse] / 2), ratio, method="chroma+onsets")


def _onset_times(x16: np.ndarray) -> np.ndarray:
    """Note onsets (s) of 16 kHz audio: peaks of the 1 kHz onset envelope, at least 80 ms apart."""
    env = onset_envelope(x16, 16000, 1000)
    peaks, _ = signal.find_peaks(env, height=0.3 * np.percentile(env, 99), distance=80)
    return peaks / 1000.0


def video_offset(mouth_by_segment: list[tuple[np.ndarray, np.ndarray]], vocal: np.ndarray, sr: int,
                 log_offset_s: float, search_s: float = 0.5) -> OffsetEstimate:
    """Mic time of video time 0, from mouth opening vs vocal loudness.

    `mouth_by_segment`: per segment, (video times of its frames in s, mouth opening per frame).
    """
    rate = 1000
    env = loudness_envelope(vocal, sr, rate)
    t_env = np.arange(len(env)) / rate
    lags = np.arange(-search_s, search_s + 1e-9, 1.0 / rate) + log_offset_s
    total = np.zeros(len(lags))
    weight = 0
    for times, mouth in mouth_by_segment:
        ok = np.isfinite(mouth)
        if ok.sum() < 30:
            continue
        m = _standardise(mouth[ok])
        t = times[ok]
        # Loudness over each frame's exposure, at every candidate lag: (lags, frames).
        sampled = np.interp(t[None, :] + lags[:, None], t_env, env)
        total += (_standardise(sampled) * m[None, :]).sum(axis=1)
        weight += len(m)
    if weight == 0:
        return OffsetEstimate(float("nan"), 0.0, 0.0)
    score = total / weight
    k = int(np.argmax(score))
    delta = 0.0
    if 0 < k < len(score) - 1:
        denom = score[k - 1] - 2 * score[k] + score[k + 1]
        delta = 0.5 * (score[k - 1] - score[k + 1]) / denom if denom < 0 else 0.0
    far = np.abs(lags - lags[k]) > 0.25
    away = np.abs(lags - lags[k]) >= 0.2
    margin = float(score[k] - score[away].max()) if away.any() else 0.0
    at_edge = min(k, len(score) - 1 - k) < 2 * rate // 30  # within two frames of the border
    return OffsetEstimate(float(lags[k] + delta / rate), float(score[k]), _peak_ratio(score, k, far), margin, at_edge)
