"""Real faces with known motion: tracking accuracy against truth no tracker produced.

Two real talking clips (../shared/data/talking_face) become capture-like 4K takes whose every frame
is moved by a known affine (sway, roll up to ±15°, zoom 0.8–1.3, a lean that forces a crop cut),
each clip played forward then backward (12–13 s takes of 336–367 frames);
the truth is dlib's own detection on the unmoved clip frame mapped through that affine
(samples.realfaces). Both takes go through `process` (Prefect flow on Dask) with the packaged
ICT head. Targets (issue 14), per clip: landmarks p95 ≤ 0.08 inter-ocular distances, FLAME
reprojection median ≤ 4 px and p95 ≤ 10 px at 1024², ≤ 5 % of frames replaced as box-plot
outliers; ≥ 90 % of the seconds with a face kept is the five-clip benchmark's target
(bench/realfaces.py), a single take is held to 80 % (see the test).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

#: A constant and a variable frame rate source, two people; the seeds of bench/realfaces.py (the
#: clips' order there). Where cuts fall depends on the seeded motion: a cut that leaves a < 3 s
#: remainder drops it (crop rules), e.g. clip1 with seed 1 keeps 80 % (three passes, the benchmark's).
CLIPS = {"clip4": 3, "clip1": 0}
#: Clip passes per take: the benchmark plays each clip three times (forward, backward, forward);
#: two passes keep a lean, its crop cut and two segments per take (asserted) at two thirds of the
#: frames. Measured clip4/clip1 with three passes → two: landmark p95 0.021/0.064 → 0.021/0.063
#: IOD, reprojection median 3.5/3.2 → 3.4/3.2 px, outlier share 0.029/0.032 → 0.043/0.047.
PASSES = 2


def _build(shared_data: Path, tmp: Path, clip: str, seed: int) -> Path:
    from singinghead.samples.realfaces import build_realface_session

    return build_realface_session(shared_data / "talking_face" / f"{clip}.mp4", tmp / clip, video_to_mic=0.3,
                                  log_video_to_mic=0.3 if clip == "clip4" else 0.0, seed=seed,
                                  passes=PASSES)


def background_builds(tmp_path_factory) -> dict:
    """Both takes, built in the background while the tests before this module run (conftest.prebuilt)."""
    if not SHARED_DATA.is_dir():
        return {}
    tmp = tmp_path_factory.mktemp("realfaces")
    return {"real_sessions": [(_build, (SHARED_DATA, tmp, c, seed)) for c, seed in CLIPS.items()]}


@pytest.fixture(scope="module")
def real_takes(shared_data, prebuilt, prefect_harness) -> dict[str, dict]:
    from singinghead.flows.process_session import run_process_sessions
    from singinghead.samples.realfaces import score_take

    sessions = [future.result() for future in prebuilt["real_sessions"]]
    tmp = sessions[0].parent
    run_process_sessions(sessions, tmp / "out")
    scores = {}
    for c, s in zip(CLIPS, sessions, strict=True):
        scores[c] = score_take(tmp / "out", s)
        scores[c]["audio"] = json.loads((tmp / "out" / "sessions" / f"real-{c}" / "audio_report.json").read_text())
    return scores


@pytest.mark.parametrize("clip", CLIPS)
def test_landmarks_stay_on_a_moving_real_face(real_takes, clip):
    r = real_takes[clip]
    assert r["frames"] > 250 and r["frames_without_landmarks"] == 0
    assert r["segments"] >= 2, "the lean should have forced a crop cut"
    assert r["landmark_p95_iod"] <= 0.08, r["landmark_p95_iod"]
    assert r["landmark_share_over_0.1_iod"] <= 0.05


@pytest.mark.parametrize("clip", CLIPS)
def test_flame_fits_a_real_face(real_takes, clip):
    r = real_takes[clip]
    assert r["reprojection_median_px"] <= 4.0 and r["reprojection_p95_px"] <= 10.0, (
        r["reprojection_median_px"], r["reprojection_p95_px"])


@pytest.mark.parametrize("clip", CLIPS)
def test_real_expression_is_not_an_outlier_and_the_crop_keeps_the_face(real_takes, clip):
    r = real_takes[clip]
    assert r["outlier_share"] <= 0.05, r["outlier_share_per_group"]
    # The ≥ 0.9 target is the benchmark's over five clips (0.92). One take can lose more: where the
    # lean and the zoom-in put the crop cuts depends on the seeded motion, and a < 3 s remainder is
    # dropped by the crop rules (clip1 keeps 0.80–0.98 across seeds); nothing beyond that is lost.
    assert r["seconds_kept_share"] >= 0.8, (r["seconds_kept"], r["seconds_with_face"])


def test_a_wrong_capture_log_is_never_used_silently(real_takes):
    """clip1's log says 0.0 s, the truth is 0.3 s: the take must end flagged (measured and
    corrected, or unverified), and a measurement that was used must be right within a frame."""
    video = real_takes["clip1"]["audio"]["take01"]["video_offset"]
    assert video["flagged"], video
    if video["source"] == "measured":
        assert abs(video["used_s"] - 0.3) <= 1 / 30, video
    right = real_takes["clip4"]["audio"]["take01"]["video_offset"]  # log right: never replaced by a wrong value
    assert abs(right["used_s"] - 0.3) <= 1 / 30, right
