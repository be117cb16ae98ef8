"""SyncNet in the audio step: the offset search against a known lag, safe loading of the weights,
and the audio step's use of it (with a randomly initialised network saved in the release's format:
the authors' weights are a user file this machine does not have)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from singinghead.schemas.errors import AssetError
from singinghead.tasks import syncnet


def test_offset_search_recovers_a_known_lag():
    """Video windows whose embedding is the audio's embedding 0.37 s later (plus noise): the
    distance curve's minimum is at 0.37 s (10 ms grid, parabola refinement) and the confidence
    (median − minimum) is large; the same windows against unrelated audio give a small one."""
    rng = np.random.default_rng(0)
    true_lag, dim = 0.37, 16
    audio_t = np.arange(3000) / syncnet.MFCC_RATE  # 30 s of audio windows every 10 ms
    walk = np.cumsum(rng.normal(size=(len(audio_t), dim)), axis=0)
    audio = walk - np.stack([np.convolve(w, np.ones(51) / 51, mode="same") for w in walk.T], axis=1)
    video_t = 1.0 + np.arange(500) / syncnet.FPS + 0.004
    video = np.stack([np.interp(video_t + true_lag, audio_t, audio[:, d]) for d in range(dim)], axis=1)
    video += rng.normal(0, 0.2, video.shape)
    lags = np.round(np.arange(-0.6, 0.6 + 1e-9, 0.01) + 0.3, 6)  # searched around a log that says 0.3
    offset, conf, _, at_edge = syncnet.offset_from_curve(lags, syncnet.distance_curve(video_t, video, audio, 0, lags))
    assert offset == pytest.approx(true_lag, abs=0.01)
    assert not at_edge
    unrelated = rng.permutation(audio)
    _, conf_unrelated, _, _ = syncnet.offset_from_curve(
        lags, syncnet.distance_curve(video_t, video, unrelated, 0, lags))
    assert conf > 5 * conf_unrelated


def test_weights_load_safely(tmp_path):
    good = tmp_path / "syncnet_v2.model"
    torch.manual_seed(0)
    net = syncnet.SyncNet()
    torch.save(net.state_dict(), good)
    loaded = syncnet.load_syncnet(good, device="cpu")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.model"
    evil.write_bytes(pickle.dumps({"netcnnaud.0.weight": Payload()}))
    with pytest.raises(AssetError, match="evil.model"):
        syncnet.load_syncnet(evil)
    assert not marker.exists()

    wrong = tmp_path / "other.model"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(AssetError, match="not the syncnet_v2 layout"):
        syncnet.load_syncnet(wrong)
    with pytest.raises(AssetError, match="no such file"):
        syncnet.load_syncnet(tmp_path / "missing.model")


def test_audio_step_measures_with_syncnet_when_its_weights_are_set(short_session, tmp_path, monkeypatch):
    """With SINGINGHEAD_SYNCNET_WEIGHTS set, the audio step runs SyncNet on every portrait frame
    with a face (25 fps windows of 0.2 s), reports its confidence, decides `measured` from it, and
    the weights' hash keys the cache (other weights → the step runs again). On the short session's
    first take (3.3 s, 720p): this is the step's wiring; bench/avsync.py measures SyncNet's accuracy."""
    from singinghead.schemas.manifest import load_manifest
    from singinghead.storage import files
    from singinghead.tasks import audio, crop

    weights = tmp_path / "syncnet_v2.model"
    torch.manual_seed(1)
    torch.save(syncnet.SyncNet().state_dict(), weights)
    monkeypatch.setenv("SINGINGHEAD_SYNCNET_WEIGHTS", str(weights))

    take, out = load_manifest(short_session).take("take01"), str(tmp_path / "out")
    video_sha, song_sha, mic_sha = (files.sha256_file(short_session / f)[0] for f in (take.video, take.song.file,
                                                                                       take.mic))
    crop_refs = crop.crop_for_take(str(short_session), "sample007", take.id, take.video, video_sha, out)
    refs = audio.audio_for_take(str(short_session), "sample007", take, song_sha, mic_sha, 0.0, crop_refs, out)
    segments = next(r.url for r in crop_refs if r.meta.get("kind") == "segments")
    report = audio.read_report(refs)
    video = report["video_offset"]
    assert video["method"] == "syncnet"
    frames = sum(len(r["timestamps_s"]) for r in files.read_parquet(segments).to_pylist())
    assert frames >= 90  # the take's 99 frames, cropped whole
    assert video["windows"] >= 0.9 * frames * syncnet.FPS / 30 - 10  # a face in (nearly) every frame
    assert np.isfinite(video["confidence"])
    assert video["confident"] == (video["confidence"] >= 3.0 and not video["at_edge"])
    assert video["status"] == ("measured" if video["confident"] else "unverified")
    if video["status"] == "unverified":
        assert any("SyncNet confidence" in f for f in report["flags"])
    catalog = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*.json") if "catalog" in p.parts]
    assert any(syncnet.weights_id(weights)["weights_sha256"] in json.dumps(c) for c in catalog)

    torch.manual_seed(2)
    torch.save(syncnet.SyncNet().state_dict(), weights)
    assert audio.done_outputs(str(tmp_path / "out"), take, song_sha, mic_sha, crop_refs) is None
