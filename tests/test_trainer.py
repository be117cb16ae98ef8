"""UniSinger 3D module: plumbing, non-autoregressive diverse generation, overfitting, exact resume,
the FaceFormer-style baseline and the evaluation table, on a small synthetic release."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from singinghead.samples.layout import write_singinghead_layout
from singinghead.tasks.interop import import_singinghead
from singinghead.trainer.data import ReleaseWindows
from singinghead.trainer.evaluate import COLUMNS, EYE_COLUMNS, HEAD_COLUMNS, evaluate, table_markdown
from singinghead.trainer.models.audio import write_random_wav2vec2
from singinghead.trainer.models.vae import FaceFormerStyle, ModelConfig, UniSingerVAE, alignment_mask
from singinghead.trainer.train import TrainConfig, train

TINY = ModelConfig(d_model=64, heads=4, layers=1, feedforward=128, dropout=0.0)


def _small_release(tmp: Path) -> str:
    """Four windows of the SingingHead layout (two train, two test), imported."""
    write_singinghead_layout(tmp / "layout", windows=4, splits=(0.5, 0.0, 0.5))
    out = str(tmp / "release")
    assert import_singinghead(tmp / "layout", out)["windows"] == 4
    return out


def _overfit(tmp: Path) -> tuple[str, Path]:
    """200 steps of the tiny model on the train split's two windows: (release, run folder)."""
    release = _small_release(tmp)
    cfg = TrainConfig(data=release, out=str(tmp / "run"), model=TINY, epochs=1000, max_steps=200,
                      batch_size=2, lr=5e-3, warmup_steps=5, checkpoint_every=1000)
    train(cfg, progress=False)
    return release, tmp / "run"


def background_builds(tmp_path_factory) -> dict:
    """The overfitting run (the trainer's longest), trained in the background while the tests
    before this module run (conftest.prebuilt); its test checks it."""
    return {"overfit_run": [(_overfit, (tmp_path_factory.mktemp("overfit"),))]}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> str:
    return _small_release(tmp_path_factory.mktemp("trainer"))


@pytest.fixture(scope="module")
def w2v(tmp_path_factory) -> Path:
    return write_random_wav2vec2(tmp_path_factory.mktemp("w2v"))


@pytest.fixture(scope="module")
def batch(release):
    items = list(ReleaseWindows(release, "train", audio=("singing",)))
    return {k: torch.stack([i[k] for i in items]) for k in ("motion", "shape", "bgm_mfcc", "singing")}


def test_alignment_mask():
    m = alignment_mask(5, 3, 2)
    assert not m[:2].any()  # the [μ], [σ] tokens see every audio frame
    assert (~m[2:]).sum(1).tolist() == [1, 1, 1] and (~m[2:]).nonzero()[:, 1].tolist() == [0, 1, 2]


def test_shapes_and_one_decoder_pass(w2v, batch):
    torch.manual_seed(0)
    model = UniSingerVAE(w2v, TINY).eval()
    out = model(batch["motion"], batch["shape"], batch["singing"], batch["bgm_mfcc"])
    assert out["motion"].shape == batch["motion"].shape and out["mu"].shape == (2, 64)
    calls = []
    model.decoder.register_forward_hook(lambda *a: calls.append(1))
    z = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    a = model.generate(batch["shape"], batch["singing"], batch["bgm_mfcc"], z=z)
    assert calls == [1]  # all 240 frames from one decoder pass
    b = model.generate(batch["shape"], batch["singing"], batch["bgm_mfcc"], z=z)
    c = model.generate(batch["shape"], batch["singing"], batch["bgm_mfcc"], z=z + 1.0)
    torch.nn.init.normal_(model.motion_out.weight)  # an untrained output layer is zero: give it weights
    d1 = model.generate(batch["shape"], batch["singing"], batch["bgm_mfcc"], z=z)
    d2 = model.generate(batch["shape"], batch["singing"], batch["bgm_mfcc"], z=z + 1.0)
    assert a.shape == (2, 240, 59) and torch.equal(a, b) and torch.equal(a, c)  # zero-initialised output
    assert (d1 - d2).abs().mean() > 1e-3  # different z → different motion
    assert torch.equal(d1, model.generate(batch["shape"], batch["singing"], batch["bgm_mfcc"], z=z))


def test_faceformer_baseline_decodes_autoregressively(w2v, batch):
    torch.manual_seed(0)
    model = FaceFormerStyle(w2v, TINY).eval()
    torch.nn.init.normal_(model.motion_out.weight, std=0.01)
    calls = []
    model.decoder.register_forward_hook(lambda *a: calls.append(1))
    out = model.generate(batch["shape"][:1], batch["singing"][:1], batch["bgm_mfcc"][:1])
    assert out.shape == (1, 240, 59) and len(calls) == 240
    # teacher forcing on its own output reproduces it (the causal mask hides the future)
    forced = model(out, batch["shape"][:1], batch["singing"][:1], batch["bgm_mfcc"][:1])["motion"]
    torch.testing.assert_close(forced, out, atol=1e-5, rtol=1e-4)


def _log(run: Path) -> list[dict]:
    with open(run / "log.csv") as fh:
        return list(csv.DictReader(fh))


def test_tiny_model_overfits(prebuilt):
    release, run = prebuilt["overfit_run"][0].result()
    losses = [float(r["loss"]) for r in _log(run)]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.1 * first, (first, last)
    # Sampled from the prior (z ~ N(0, I), no teacher forcing), the jaw follows the singing: the
    # layout's jaw is 0.25 × the syllable envelope, so its truth correlates 1 with it; a model
    # that ignored the audio would give ~0 (its jaw would not know the window's phase).
    from singinghead.schemas import motion as layout
    from singinghead.trainer.train import load_for_inference

    model = load_for_inference(run / "checkpoints/last.pt")[0]
    g = torch.Generator().manual_seed(0)
    for w in ReleaseWindows(release, "train", audio=("singing",)):
        with torch.no_grad():
            jaw = model.generate(w["shape"][None].expand(4, -1), w["singing"][None].expand(4, -1),
                                 w["bgm_mfcc"][None].expand(4, -1, -1), generator=g)[..., layout.JAW.start]
        truth = w["motion"][:, layout.JAW.start]
        for sample in jaw:
            assert float(torch.corrcoef(torch.stack([sample, truth]))[0, 1]) > 0.8


def test_resume_gives_the_same_next_steps(release, tmp_path):
    base = dict(data=release, model=ModelConfig(d_model=64, heads=4, layers=1, feedforward=128, dropout=0.1),
                epochs=1000, max_steps=6, batch_size=1, lr=1e-3, warmup_steps=2, checkpoint_every=3)
    full = tmp_path / "full"
    train(TrainConfig(out=str(full), **base), progress=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.copyfile(resumed / "checkpoints/step-0000003.pt", resumed / "checkpoints/last.pt")
    rows = _log(resumed)[:3]
    with open(resumed / "log.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    train(TrainConfig(out=str(resumed), **base), progress=False)
    a, b = _log(full), _log(resumed)
    assert [r["step"] for r in b] == [str(i) for i in range(1, 7)]
    assert [r["loss"] for r in a[3:]] == [r["loss"] for r in b[3:]]  # bit-identical after resume


def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    """`evaluate`, `evaluate-2d` and `animate` load checkpoints with weights_only: a file whose
    unpickling would run code is refused with its name, and the code never runs."""
    import pickle

    from singinghead.trainer.renderer_train import load_renderer
    from singinghead.trainer.train import load_for_inference

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "run/checkpoints/last.pt"
    evil.parent.mkdir(parents=True)
    torch.save({"model": {}, "config": Payload()}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    for load in (load_for_inference, load_renderer):
        with pytest.raises(ValueError, match=r"last\.pt: not a singinghead checkpoint"):
            load(evil)
    assert not marker.exists()


def test_evaluate_prints_table_columns(release, tmp_path):
    cfg = TrainConfig(data=release, out=str(tmp_path / "run"), model=TINY, epochs=10, max_steps=2, batch_size=2,
                      warmup_steps=1)
    result = train(cfg, progress=False)
    rows = evaluate(result["checkpoint"], release, "test", (1, 3))
    assert [r["n"] for r in rows] == [1, 3] and set(COLUMNS + HEAD_COLUMNS + EYE_COLUMNS) <= set(rows[0])
    assert rows[0]["device"] == "cpu" and rows[0]["FPS"] == rows[1]["FPS"]  # one per-sample definition for every n
    assert rows[0]["Diversity"] == 0.0 and rows[0]["LVE mean"] == rows[0]["LVE min"]
    # three samples from three latent codes differ, so the best of them beats their mean
    assert rows[1]["Diversity"] > 0 and rows[1]["LVE min"] < rows[1]["LVE mean"] and rows[1]["FPS"] > 0
    assert all(rows[1][c] == rows[1][c] for c in ("LVE mean", "FVE mean", "PPE", "MinDist"))  # not NaN
    truth = evaluate(result["checkpoint"], release, "test", (1, 3), ground_truth_as_prediction=True)
    for row in truth:  # the ground truth scored as a prediction through evaluate's own path
        assert all(row[c] == pytest.approx(0, abs=1e-6) for c in ("LVE mean", "LVE min", "FVE mean", "FVE min",
                                                                     "FDD", "PPE", "MinDist", "MeanDist", "APD",
                                                                     "Diversity"))
        assert row["CCA pose speed"] == pytest.approx(1, abs=1e-6) and row["Rough"] == row["Rough GT"]
        assert row["Blinks/s"] == row["Blinks/s GT"]
    table = table_markdown(rows, "t")
    assert "| LVE mean |" in table and "| CCA pose speed |" in table and "| CCA eye state |" in table
    assert "FDD in ×10⁻² mm" in table and "on cpu" in table


def test_animate_blends_consecutive_windows_without_a_jump(release, tmp_path):
    """animate's motion over 20 s: windows overlap by 2 s and are cross-faded, so no frame-to-frame
    step at a window boundary is larger than the steps inside windows — while windows of motion
    that differ by a constant (known answer) change by exactly 1/61 per frame across the overlap."""
    from singinghead.flows.animate import OVERLAP_FRAMES, blend_windows, window_starts

    starts = window_starts(600)
    assert starts == [0, 180, 360] and starts[-1] + 240 >= 600
    constant = [torch.full((240, 59), float(k)) for k in range(len(starts))]
    blended = blend_windows(constant, starts, 600)
    steps = (blended[1:] - blended[:-1]).abs().amax(dim=1)
    assert float(steps.max()) == pytest.approx(1 / (OVERLAP_FRAMES + 1), rel=1e-5)
    assert float(blended[0, 0]) == 0 and float(blended[-1, 0]) == len(starts) - 1

    cfg = TrainConfig(data=release, out=str(tmp_path / "run"), model=TINY, epochs=10, max_steps=2, batch_size=2,
                      warmup_steps=1)
    model_dir = train(cfg, progress=False)["checkpoint"]
    from singinghead.trainer.train import load_for_inference

    model = load_for_inference(model_dir)[0]
    g = torch.Generator().manual_seed(0)
    chunks = [model.generate(torch.zeros(1, 100), torch.randn(1, 128000, generator=g) * 0.1,
                             torch.randn(1, 240, 64, generator=g), generator=g)[0].detach() for _ in starts]
    motion = blend_windows(chunks, starts, 600)
    step = (motion[1:] - motion[:-1]).norm(dim=1)
    boundary = torch.tensor([s + 240 - 1 for s in starts[:-1]] + [s - 1 for s in starts[1:]])
    inside = torch.ones(len(step), dtype=torch.bool)
    inside[boundary] = False
    naive = torch.cat(chunks)  # windows laid end to end: the jump the blend removes
    jumps = (naive[1:] - naive[:-1]).norm(dim=1)[[239, 479]]
    assert float(step[boundary].max()) <= float(step[inside].max())
    assert float(jumps.max()) > float(step[boundary].max())


def test_ground_truth_on_a_metronome_scores_ba_1(tmp_path):
    """Known answer for BA through evaluate's own path: the singing is a metronome (a click every
    0.5 s) and the head nods so that it stops exactly at every click (pose ∝ cos 2πt), so the ground
    truth fed as the prediction must score BA = 1 — and the same nod a quarter period late (stopping
    7.5 frames from every click) must score about exp(−7.5²/18) ≈ 0.04. The clicks and the nod are
    placed by construction, not by the beat detectors under test."""
    import pickle

    import numpy as np
    import soundfile as sf

    from singinghead.schemas import motion as layout
    from singinghead.schemas import release as R

    names = write_singinghead_layout(tmp_path / "layout", windows=2, splits=(0.5, 0.0, 0.5))
    t = np.arange(R.WINDOW_FRAMES) / layout.FPS
    rng = np.random.default_rng(1)
    scores = {}
    for late in (0.0, 0.25):
        for name in names:
            clicks = np.zeros(R.WINDOW_SAMPLES, np.float32)
            for s in np.arange(0.5, 8, 0.5):
                clicks[int(s * R.SAMPLE_RATE): int(s * R.SAMPLE_RATE) + 200] = rng.normal(0, 0.5, 200)
            sf.write(tmp_path / "layout/audio_seqs" / f"{name}.wav", clicks, R.SAMPLE_RATE, subtype="FLOAT")
            seq = tmp_path / "layout/flame_seqs" / f"{name}.pkl"
            with open(seq, "rb") as fh:
                data = pickle.load(fh)
            data["flame"][:, layout.GLOBAL_ORIENT] = 0.1 * np.cos(2 * np.pi * (t[:, None] - late)) * [1, 0.5, 0.2]
            data["flame"][:, layout.NECK] = 0
            with open(seq, "wb") as fh:
                pickle.dump(data, fh)
        out = str(tmp_path / f"release{late}")
        import_singinghead(tmp_path / "layout", out)
        run = train(TrainConfig(data=out, out=str(tmp_path / f"run{late}"), model=TINY, epochs=1, max_steps=1,
                                batch_size=1, warmup_steps=1), progress=False)
        scores[late] = evaluate(run["checkpoint"], out, "test", (1,), ground_truth_as_prediction=True)[0]["BA"]
    assert scores[0.0] == pytest.approx(1.0, abs=1e-9)
    assert scores[0.25] == pytest.approx(np.exp(-7.5 ** 2 / 18), abs=0.03)
