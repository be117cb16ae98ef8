"""Vocal removal quality and speed per available backend on the sample session's songs.

SI-SDR and SDR (fast_bss_eval) of vocals and accompaniment against the ground-truth stems, the
mixture's own scores as the reference, and speed as a multiple of real time. Backends run:
builtin always; demucs when SINGINGHEAD_DEMUCS_DIR is set (else a tiny random HTDemucs, which
measures speed only); spleeter when SINGINGHEAD_SPLEETER_ENV is set. Last line: one JSON object,
also written to bench/results/separation.json.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fast_bss_eval  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from results_io import publish  # noqa: E402

from singinghead.samples.session import build_sample_session  # noqa: E402
from singinghead.tasks import vocal_removal  # noqa: E402


def scores(ref: np.ndarray, est: np.ndarray) -> tuple[float, float]:
    r, e = ref.mean(axis=1)[None], est.mean(axis=1)[None]
    si = float(fast_bss_eval.si_sdr(r, e, zero_mean=True)[0])
    sdr = float(fast_bss_eval.sdr(r, e, zero_mean=True)[0])
    return si, sdr


def tiny_demucs(folder: Path) -> None:
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state

    torch.manual_seed(0)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=8, depth=2, t_layers=1, t_heads=2,
                     nfft=1024, segment=2, dconv_comp=4)
    args, kwargs = model._init_args_kwargs
    folder.mkdir(exist_ok=True)
    torch.save({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": get_state(model, None, half=False),
                "training_args": {}}, folder / "a1b2c3d4.th")
    (folder / "tiny.yaml").write_text("models: ['a1b2c3d4']\nsegment: 2\n")


def main() -> dict:
    result: dict = {"name": "separation"}
    with tempfile.TemporaryDirectory() as tmp:
        session = build_sample_session(Path(tmp) / "s", seed=0)
        backends = ["builtin", "demucs"] + (["spleeter"] if os.environ.get("SINGINGHEAD_SPLEETER_ENV") else [])
        if not os.environ.get("SINGINGHEAD_DEMUCS_DIR"):
            tiny_demucs(Path(tmp) / "demucs")
            os.environ.update(SINGINGHEAD_DEMUCS_DIR=str(Path(tmp) / "demucs"), SINGINGHEAD_DEMUCS_MODEL="tiny")
            result["demucs_model"] = "tiny random HTDemucs (speed only; set SINGINGHEAD_DEMUCS_DIR for real weights)"
        for backend in backends:
            rows = []
            for take in ("take01", "take02"):
                song_path = session / f"songs/{take}.flac"
                song, sr = sf.read(song_path, dtype="float32")
                voc, _ = sf.read(session / f"ground_truth/{take}_song_vocals.wav", dtype="float32")
                acc, _ = sf.read(session / f"ground_truth/{take}_song_accompaniment.wav", dtype="float32")
                t0 = time.perf_counter()
                est = vocal_removal.separate(song_path, backend)
                took = time.perf_counter() - t0
                n = min(len(song), len(est.vocals))
                rows.append({
                    "seconds": len(song) / sr, "took": took,
                    "vocals": scores(voc[:n], est.vocals[:n]), "accompaniment": scores(acc[:n], est.accompaniment[:n]),
                    "mixture_vs_vocals": scores(voc, song), "mixture_vs_accompaniment": scores(acc, song),
                })

            def mean(key: str, i: int, rows: list = rows) -> float:
                return float(np.mean([r[key][i] for r in rows]))

            result[f"{backend}_vocals_sisdr_db"] = round(mean("vocals", 0), 2)
            result[f"{backend}_vocals_sdr_db"] = round(mean("vocals", 1), 2)
            result[f"{backend}_accompaniment_sisdr_db"] = round(mean("accompaniment", 0), 2)
            result[f"{backend}_accompaniment_sdr_db"] = round(mean("accompaniment", 1), 2)
            result[f"{backend}_accompaniment_sisdr_improvement_db"] = round(
                mean("accompaniment", 0) - mean("mixture_vs_accompaniment", 0), 2)
            realtime = sum(r["seconds"] for r in rows) / sum(r["took"] for r in rows)
            result[f"{backend}_realtime_factor"] = round(realtime, 2)
        result["mixture_accompaniment_sisdr_db"] = round(mean("mixture_vs_accompaniment", 0), 2)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return publish(result)


if __name__ == "__main__":
    main()
