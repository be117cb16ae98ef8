"""FLAME core: safe loading, the procedural model in FLAME's formats, the torch layer."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from singinghead.flame.ict import write_model
from singinghead.flame.io import safe_load_pickle
from singinghead.flame.layer import FlameLayer
from singinghead.flame.model import load_flame
from singinghead.schemas.errors import AssetError


@pytest.fixture(scope="module")
def flame_dir(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("flame"))


@pytest.fixture(scope="module")
def model(flame_dir):
    return load_flame(flame_dir)


def test_files_have_flames_format(flame_dir, model):
    raw = (flame_dir / "generic_model.pkl").read_bytes()
    assert b"chumpy.ch" in raw and b"scipy.sparse" in raw  # as in the official file
    assert model.shapedirs.shape[1:] == (3, 400) and model.posedirs.shape[1:] == (3, 36)
    assert model.J_regressor.shape == (5, len(model.v_template)) and model.weights.shape == (len(model.v_template), 5)
    assert model.parents.tolist() == [-1, 0, 1, 1, 1]
    assert model.lmk_faces_idx.shape == (68,) and model.dynamic_lmk_faces_idx.shape == (79, 17)
    np.testing.assert_allclose(model.lmk_bary_coords.sum(axis=1), 1.0)
    np.testing.assert_allclose(model.weights.sum(axis=1), 1.0)
    assert {"face", "lips", "forehead", "eye_region"} <= set(model.masks)
    assert set(model.masks["lips"]) <= set(model.masks["face"])


def test_code_in_a_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(pickle.dumps({"v_template": Payload()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load posix.system"):
        safe_load_pickle(bad)
    assert not marker.exists()


def test_missing_model_names_the_setting(tmp_path):
    with pytest.raises(AssetError, match="SINGINGHEAD_FLAME_DIR"):
        load_flame(tmp_path)


def _params(b: int, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return r(b, 100), r(b, 50), 0.2 * r(b, 3), 0.2 * r(b, 3), 0.3 * torch.rand(b, 3, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_landmark_path_equals_full_mesh(model, dtype):
    layer = FlameLayer(model, dtype=dtype)
    shape, expr, glob, neck, jaw = _params(6, dtype)
    _, full = layer(shape, expr, glob, neck, jaw)
    assert (layer.landmarks(shape, expr, glob, neck, jaw) - full).abs().max() < 1e-5
    layer.fold_shape(shape[:1])
    folded = layer.landmarks(None, expr[:1].repeat(3, 1), glob[:3], neck[:3], jaw[:3])
    verts, full = layer(shape[:1].repeat(3, 1), expr[:1].repeat(3, 1), glob[:3], neck[:3], jaw[:3])
    assert (folded - full).abs().max() < 1e-5
    folded_verts, folded_full = layer(None, expr[:1].repeat(3, 1), glob[:3], neck[:3], jaw[:3])  # mesh, folded
    assert (folded_verts - verts).abs().max() < 1e-5 and (folded_full - full).abs().max() < 1e-5


def test_jaw_opens_the_mouth_and_landmarks_sit_on_a_face(model):
    layer = FlameLayer(model, dtype=torch.float64)
    zero = torch.zeros(5, 3, dtype=torch.float64)
    jaw = torch.zeros(5, 3, dtype=torch.float64)
    jaw[:, 0] = torch.linspace(0, 0.4, 5)
    _, lmk = layer(torch.zeros(5, 100, dtype=torch.float64), torch.zeros(5, 50, dtype=torch.float64), zero, zero, jaw)
    gap = (lmk[:, 66] - lmk[:, 62]).norm(dim=1)
    assert (gap.diff() > 0.003).all()  # wider with every step, by millimetres
    assert ((lmk[:, 36:48] - lmk[0, 36:48]).norm(dim=2) < 5e-4).all()  # eyes: only pose correctives, < 0.5 mm
    p = lmk[0].numpy()
    eyes, nose, mouth, chin = p[36:48, 1].mean(), p[30, 1], p[48:68, 1].mean(), p[8, 1]
    assert eyes > nose > mouth > chin
    np.testing.assert_allclose(p[36:42, 0].mean(), -p[42:48, 0].mean(), atol=1e-3)  # left/right symmetric
    assert (p[:, 2] > 0.02).all()  # all on the front of the head


def test_vertex_subset_equals_full_mesh(model):
    layer = FlameLayer(model, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    shape, expr = torch.randn(2, 100, generator=g, dtype=torch.float64), torch.randn(2, 50, generator=g,
                                                                                      dtype=torch.float64)
    glob, neck, jaw = (0.2 * torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(3))
    full = layer(shape, expr, glob, neck, jaw)[0]
    for subset in (model.masks["lips"], model.masks["face"], range(len(model.v_template))):  # the last: every joint
        subset = torch.as_tensor(subset)
        part = layer.vertices(shape, expr, glob, neck, jaw, subset)
        assert (part - full[:, subset]).abs().max() < 1e-9
    # One shape per sequence (the trainer's mesh loss): frames 0–1 of the first shape, 2–3 of the second.
    frames = [torch.cat([x, x.flip(0)]) for x in (expr, glob, neck, jaw)]
    per_frame = layer(shape.repeat_interleave(2, 0), *frames)[0]
    subset = torch.as_tensor(model.masks["face"])
    per_sequence = layer.vertices(shape, *frames, subset)
    assert (per_sequence - per_frame[:, subset]).abs().max() < 1e-9
    with pytest.raises(ValueError, match="3 frames do not split into 2 sequences"):
        layer.vertices(shape, *(x[:3] for x in frames), subset)


# --- the ICT head (the stand-in when SINGINGHEAD_FLAME_DIR is unset) -------------------------------

def test_ict_head_ships_small_with_its_licence():
    from singinghead.flame import ict

    assert ict.PACKAGED.stat().st_size < 5 * 2**20
    assert "MIT" in (ict.PACKAGED.parent / "LICENSE.ICT-FaceKit.txt").read_text()
    report = ict.report()
    assert report["identity_modes"] == 100 and report["expression_directions"] == 50
    assert report["expression_variance_kept"] > 0.99


def test_ict_jaw_reproduces_jaw_open_and_blinks_close_the_eyes(shared_data, model):
    """Against ICT's own shapes (not the converter's output): the fitted hinge at its full angle
    gives jawOpen's landmarks, and expression directions 0/1 close the left/right lid."""
    from singinghead.flame import ict

    source = ict.read_ict(shared_data / "ict_facekit" / "ict_face_light.npz")
    names = source["expression_names"]
    true_open = (source["neutral"] + source["expression"][names.index("jawOpen")])[source["landmarks_68"]] * 0.01
    layer = FlameLayer(model, dtype=torch.float64)
    z = lambda n: torch.zeros(1, n, dtype=torch.float64)  # noqa: E731
    angle = np.deg2rad(ict.report()["jaw"]["angle_deg"])
    _, opened = layer(z(100), z(50), z(3), z(3), torch.tensor([[angle, 0.0, 0.0]], dtype=torch.float64))
    # within a millimetre (the decimated surface and float16 storage; the lips open by 4 cm)
    assert np.linalg.norm(opened[0].numpy() - true_open, axis=1).max() < 1e-3

    from singinghead.features.face import eye_aspect_ratio

    def ear(expression):
        lmk = layer.landmarks(z(100), expression, z(3), z(3), z(3))[0].numpy()
        front = lmk[:, [0, 1]]  # seen from the front
        return eye_aspect_ratio(front[36:42]), eye_aspect_ratio(front[42:48])

    open_r, open_l = ear(z(50))
    blink_l, blink_r = z(50), z(50)
    blink_l[0, 0], blink_r[0, 1] = 1.0, 1.0
    closed = ear(blink_l), ear(blink_r)
    assert closed[0][1] < 0.3 * open_l and closed[0][0] > 0.9 * open_r  # eyeBlink_L: the subject's left (image right)
    assert closed[1][0] < 0.3 * open_r and closed[1][1] > 0.9 * open_l


def test_ict_converter_rebuilds_the_shipped_head(shared_data, tmp_path):
    from singinghead.flame import ict

    rebuilt = ict.convert(ict.read_ict(shared_data / "ict_facekit" / "ict_face_light.npz"))
    shipped = ict.load_compact()
    assert set(rebuilt) == set(shipped)
    for key in ("faces", "lmk_faces_idx"):
        np.testing.assert_array_equal(rebuilt[key], shipped[key])
    np.testing.assert_allclose(rebuilt["shapedirs_mm"].astype(float), shipped["shapedirs_mm"].astype(float), atol=0.01)


def test_rotations_equal_romas_in_value_and_gradient():
    """`rotvec_to_rotmat` (the fits' and the trainer's) against roma's Rodrigues, float64: angles
    from 0 (ours is smooth there; roma switches to a first-order formula below 1e-6) through 1e-3
    to almost π, and the gradient of a weighted sum of the matrices (finite at 0, where the fits
    start; checked by finite differences at every angle)."""
    import roma

    from singinghead.flame.layer import rotvec_to_rotmat

    g = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(6, 4, 3, generator=g, dtype=torch.float64), dim=-1)
    angles = torch.tensor([0.0, 1e-7, 1e-3, 0.3, 2.0, 3.1], dtype=torch.float64)
    rotvec = (axes * angles[:, None, None]).requires_grad_(True)
    ours, theirs = rotvec_to_rotmat(rotvec), roma.rotvec_to_rotmat(rotvec)
    assert ours.shape == (6, 4, 3, 3) and (ours - theirs).abs().max() < 1e-12
    weights = torch.randn(3, 3, generator=g, dtype=torch.float64)
    grad_ours, = torch.autograd.grad((ours * weights).sum(), rotvec)
    grad_theirs, = torch.autograd.grad((theirs * weights).sum(), rotvec)
    assert torch.isfinite(grad_ours).all()
    # roma's small-angle branch (θ < 1e-6) is first order: compare its gradient from 1e-3 up.
    assert (grad_ours[2:] - grad_theirs[2:]).abs().max() < 1e-9
    assert torch.autograd.gradcheck(rotvec_to_rotmat, (rotvec.detach()[:, :1].clone().requires_grad_(True),))


@pytest.mark.parametrize("folded", [False, True])
def test_reprojection_error_and_its_hand_written_gradient_equal_autograds(model, folded):
    """The fits' reprojection error (hand-written backward) against autograd through the landmark
    path and the camera, float64, one camera per frame: the error and the gradient of a weighted
    sum of it in every input (shape folded into the basis, as the sequence fit has it, or not, as
    the per-frame fit); and torch's gradcheck (finite differences) on the function itself."""
    from singinghead.flame.camera import project, to_camera
    from singinghead.flame.layer import rotvec_to_rotmat
    from singinghead.flame.reprojection import LandmarkBasis, reprojection_error

    layer = FlameLayer(model, dtype=torch.float64)
    shape, expr, glob, neck, jaw = (p.requires_grad_(True) for p in _params(5))
    g = torch.Generator().manual_seed(1)
    trans = (torch.tensor([0.01, -0.02, 0.6], dtype=torch.float64)
             + 0.01 * torch.randn(5, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    K = torch.tensor([[1800.0, 0, 512], [0, 1810, 500], [0, 0, 1]], dtype=torch.float64).repeat(5, 1, 1)
    K[:, :2, 2] += torch.arange(5, dtype=torch.float64)[:, None]
    target = 1024 * torch.rand(5, 68, 2, generator=g, dtype=torch.float64)
    weights = torch.rand(5, generator=g, dtype=torch.float64)
    if folded:
        layer.fold_shape(shape[:1].detach())
        lmk = layer.landmarks(None, expr, glob, neck, jaw)
        basis, coefficients, inputs = LandmarkBasis.of(layer, shape[:1].detach()), expr, [expr, glob, neck, jaw, trans]
    else:
        lmk = layer.landmarks(shape, expr, glob, neck, jaw)
        basis, coefficients = LandmarkBasis.of(layer), torch.cat([shape, expr], 1)
        inputs = [shape, expr, glob, neck, jaw, trans]
    expected = (project(to_camera(lmk, trans), K) - target).pow(2).sum(-1).mean(-1)
    rotations = rotvec_to_rotmat(torch.stack([glob, neck, jaw], 1)).unbind(1)
    error = reprojection_error(basis, coefficients, *rotations, trans, K, target)
    assert (error - expected).abs().max() < 1e-12 * expected.abs().max()
    for ours, theirs in zip(torch.autograd.grad((weights * error).sum(), inputs),
                            torch.autograd.grad((weights * expected).sum(), inputs), strict=True):
        assert (ours - theirs).abs().max() < 1e-10 * theirs.abs().max()
    leaf = lambda t: t.detach()[:2].clone().requires_grad_(True)  # noqa: E731
    assert torch.autograd.gradcheck(lambda c, r0, r1, r2, t: reprojection_error(basis, c, r0, r1, r2, t, K[:2],
                                                                                target[:2]),
                                    (leaf(coefficients), *map(leaf, rotations), leaf(trans)))
