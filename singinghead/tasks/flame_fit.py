"""FLAME tracking from 68 landmarks on portrait frames (SPEC §2.3, §2.5–2.8), per take.

Camera: the Kinect colour intrinsics carried into the portrait (crop then scale; landmarks are
undistorted with the calibration's distortion first), so a segment's camera is known and only
the head moves: FLAME's global orientation and a translation per frame.

1. `fit_frames` (monocular, per frame): shape, expression, jaw, head rotation and translation
   of every frame of a segment in one batch (Adam). The subject's shape is the mean over the
   frames of all takes (`subject_shape`), or the scan fit when a light-stage scan exists.
2. `replace_frame_outliers`: box-plot outliers per parameter group (SPEC §2.5), scale s.
3. Landmark smoothing (SPEC §2.6, `sequence_filters.smooth_landmarks`).
4. `fit_sequence` with the final shape fixed (folded into the landmark path): global
   orientation, neck, translation, expression and jaw over the sequence,
   L = Σ_t c_t·‖lmk − proj‖² + λs·Σ‖X_{t+1} − X_t‖² (global, neck, translation) + λf·(the same on
   expression and jaw) + λr·(‖θ_global‖² + ‖θ_neck‖²).
   Global vs neck: landmarks only see the composition of the two rotations (a change of pivot
   is absorbed by the translation), so the split is decided by the regularisers: with equal
   weights the rotation term's minimum is the even split, and the optimisation starts there
   (each gets half the per-frame head rotation); the translation's smoothness term shifts it a
   little. A documented convention, not recovered from data.
Output per segment: a Parquet table (schemas.motion.MOTION_SCHEMA) with the 59-d motion
[expression 50 | global 3 | neck 3 | jaw 3] per frame, translation, camera, reprojection error,
landmarks, eye closure and outlier flags.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect import task

from singinghead.capture_rigs.azure_kinect import KinectRecording
from singinghead.flame.camera import portrait_camera, project, to_camera
from singinghead.flame.ict import write_model
from singinghead.flame.layer import FlameLayer, rotvec_to_rotmat
from singinghead.flame.model import load_flame
from singinghead.flame.reprojection import LandmarkBasis, reprojection_error
from singinghead.schemas import motion as layout
from singinghead.schemas.artifacts import ArtifactRef
from singinghead.schemas.settings import get_settings, torch_device
from singinghead.storage import files
from singinghead.storage.catalog import Catalog, cache_key
from singinghead.tasks.sequence_filters import boxplot_outliers, replace_outliers, smooth_landmarks

OUTLIER_SCALE = 3.0  # Tukey's far-out fence on what jumps (sequence_filters)
#: The smallest frame-to-frame jump that can be an outlier, per group (units: the parameters'):
#: a fit's noise is far below these, a tracking failure far above.
MIN_JUMP = {"shape": 0.5, "expression": 0.5, "pose": 0.03, "jaw": 0.03, "translation": 0.005}
SHAPE_OUTLIER_SCALE = 1.5  # per-frame shapes of a subject: a population, the inner fence from its mean


def tensor_options(layer: FlameLayer) -> dict:
    """dtype and device of the layer: every tensor of a fit lives where the layer does."""
    return {"dtype": layer.p_template.dtype, "device": layer.p_template.device}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A fit's result back on the CPU: the only place tensors leave the device."""
    return t.detach().cpu().numpy()


def _targets(lmk2d: np.ndarray, confidence: np.ndarray | None, on: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmarks with missing frames (NaN) zeroed, and per-frame weights (confidence, 0 when missing)."""
    lmk = np.asarray(lmk2d, dtype=np.float64)
    present = np.isfinite(lmk).all(axis=(1, 2))
    w = np.ones(len(lmk)) if confidence is None else np.nan_to_num(np.asarray(confidence, dtype=np.float64))
    w = np.where(present, w, 0.0)
    return torch.as_tensor(np.where(present[:, None, None], lmk, 0.0), **on), torch.as_tensor(w, **on)


def _jaw(pitch: torch.Tensor) -> torch.Tensor:
    """FLAME jaw pose from the opening angle: the jaw of a singer opens about x only."""
    return torch.cat([pitch, torch.zeros(len(pitch), 2, dtype=pitch.dtype, device=pitch.device)], dim=1)


def _initial_translation(target: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Per frame, the head placed behind the landmarks' centre at the distance their spread implies
    (a face ≈ 0.13 m wide)."""
    spread = (target[:, :, 0].amax(1) - target[:, :, 0].amin(1)).clamp(min=1.0)
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]  # one camera, or one per frame
    z = fx * 0.13 / spread
    c = target.mean(1)
    return torch.stack([(c[:, 0] - cx) / fx * z, (c[:, 1] - cy) / fy * z, z], 1)


@dataclass
class FrameFit:
    shape: np.ndarray  # (T, 100)
    expression: np.ndarray  # (T, 50)
    global_orient: np.ndarray  # (T, 3) the whole head's rotation (no neck split per frame)
    jaw: np.ndarray  # (T, 3)
    translation: np.ndarray  # (T, 3) metres, camera space
    error_px: np.ndarray  # (T,) RMS landmark error (NaN where the frame had no landmarks)

    def groups(self) -> dict[str, np.ndarray]:
        """Per-frame parameter vectors for the box-plot outlier test, one per group."""
        return {"shape": self.shape, "expression": self.expression, "pose": self.global_orient,
                "jaw": self.jaw, "translation": self.translation}


def fit_frames(layer: FlameLayer, lmk2d: np.ndarray, K: np.ndarray, confidence: np.ndarray | None = None,
               steps: int = 1000, lr: float = 0.04, trans_lr: float = 0.3, shape_reg: float = 1e-4,
               expr_reg: float = 1e-4) -> FrameFit:
    """Independent per-frame fits of (T, 68, 2) landmarks, batched (frames do not interact: a
    take's segments go in one batch, each frame with its segment's camera, K (T, 3, 3))."""
    on = tensor_options(layer)
    target, w = _targets(lmk2d, confidence, on)
    Kt = torch.as_tensor(K, **on)
    T = len(target)
    shape = torch.zeros(T, layer.n_shape, **on, requires_grad=True)
    expr = torch.zeros(T, layer.n_expression, **on, requires_grad=True)
    rot = torch.zeros(T, 3, **on, requires_grad=True)
    pitch = torch.zeros(T, 1, **on, requires_grad=True)
    trans = _initial_translation(target, Kt).requires_grad_(True)
    basis = LandmarkBasis.of(layer)
    neck = torch.eye(3, **on).expand(T, 3, 3)  # no neck per frame: the whole head's rotation is global

    def error():  # px² per frame
        head, jaw = rotvec_to_rotmat(torch.stack([rot, _jaw(pitch)], 1)).unbind(1)
        return reprojection_error(basis, torch.cat([shape, expr], 1), head, neck, jaw, trans, Kt, target)

    opt = torch.optim.Adam([{"params": [shape, expr, rot, pitch]}, {"params": [trans], "lr": lr * trans_lr}], lr=lr,
                           fused=True)
    for _ in range(steps):
        opt.zero_grad()
        loss = (w * error()).sum() / 100 + shape_reg * shape.pow(2).sum() + expr_reg * expr.pow(2).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            pitch.clamp_(0.0, 0.6)
    with torch.no_grad():
        rms = error().sqrt()
        rms[w == 0] = float("nan")
        jaw = _jaw(pitch)
    return FrameFit(to_numpy(shape), to_numpy(expr), to_numpy(rot), to_numpy(jaw), to_numpy(trans), to_numpy(rms))


def replace_frame_outliers(fit: FrameFit, scale: float = OUTLIER_SCALE) -> tuple[FrameFit, dict[str, np.ndarray]]:
    """Box-plot outlier replacement (SPEC §2.5) on each parameter group of the per-frame fits;
    frames without landmarks count as outliers of every group. Returns the cleaned fits and the
    per-group outlier masks."""
    missing = ~np.isfinite(fit.error_px)
    if missing.all():
        raise ValueError("no frame has landmarks")
    flags, cleaned = {}, {}
    for name, values in fit.groups().items():
        mask = missing.copy()
        mask[~missing] = boxplot_outliers(values[~missing], scale, min_jump=MIN_JUMP[name])
        flags[name] = mask
        cleaned[name] = replace_outliers(values, mask)
    fixed = FrameFit(cleaned["shape"], cleaned["expression"], cleaned["pose"], cleaned["jaw"],
                     cleaned["translation"], fit.error_px)
    return fixed, flags


@dataclass
class SequenceFit:
    motion: np.ndarray  # (T, 59) SPEC §2.8 layout
    translation: np.ndarray  # (T, 3)
    error_px: np.ndarray  # (T,) RMS reprojection error


def fit_sequence(layer: FlameLayer, lmk2d: np.ndarray, K: np.ndarray, shape: np.ndarray, init: FrameFit,
                 confidence: np.ndarray | None = None, steps: int = 500, lr: float = 0.01,
                 w_smooth: float = 500.0, w_smooth_face: float = 1.0, w_reg: float = 50.0,
                 trans_lr: float = 0.1, full_mesh: bool = False, lengths: Sequence[int] | None = None
                 ) -> SequenceFit:
    """Sequence reprojection optimisation with the subject's shape fixed (see module docstring).

    `lengths`: the frames are consecutive segments of these lengths (a take's, each with its own
    camera: K (T, 3, 3)), fitted in one batch with no smoothness across their boundaries, so each
    gets what it would alone (Adam's steps are per parameter) for less than the sum of their costs.
    `full_mesh` evaluates the landmarks through the whole skinned mesh (smplx LBS) instead of the
    landmark-only path (the shape folded into its template too): same result, for benchmarking.
    """
    on = tensor_options(layer)
    target, w = _targets(lmk2d, confidence, on)
    Kt = torch.as_tensor(K, **on)
    T = len(target)
    shape_t = torch.as_tensor(shape, **on)[None]
    layer.fold_shape(shape_t)
    half = torch.as_tensor(init.global_orient, **on) / 2  # the minimum-norm split (module docstring)
    glob = half.clone().requires_grad_(True)
    neck = half.clone().requires_grad_(True)
    expr = torch.as_tensor(init.expression, **on).clone().requires_grad_(True)
    pitch = torch.as_tensor(init.jaw[:, :1], **on).clone().requires_grad_(True)
    trans = torch.as_tensor(init.translation, **on).clone().requires_grad_(True)
    # Adam's steps are ≈ lr in every parameter: translation moves in millimetres, not centimetres.
    opt = torch.optim.Adam([{"params": [glob, neck, expr, pitch]}, {"params": [trans], "lr": lr * trans_lr}], lr=lr,
                           fused=True)

    basis = LandmarkBasis.of(layer, shape_t)

    def error():  # px² per frame
        if full_mesh:  # the shape folded as below
            lmk = layer(None, expr, glob, neck, _jaw(pitch))[1]
            return (project(to_camera(lmk, trans), Kt) - target).pow(2).sum(-1).mean(-1)
        return reprojection_error(basis, expr, *rotvec_to_rotmat(torch.stack([glob, neck, _jaw(pitch)], 1)).unbind(1),
                                  trans, Kt, target)

    ends = np.cumsum(lengths if lengths is not None else [T])
    if ends[-1] != T:
        raise ValueError(f"segment lengths {list(lengths)} do not add up to the {T} frames")
    joined = torch.ones(T - 1, 1, **on)
    joined[ends[:-1] - 1] = 0.0  # frame pairs that straddle two segments

    def diff2(x):
        step = (x[1:] - x[:-1]).pow(2)
        return (step if len(ends) == 1 else step * joined).sum()

    for _ in range(steps):
        opt.zero_grad()
        err = error()
        l_smooth = diff2(glob) + diff2(neck) + 100 * diff2(trans)
        l_face = diff2(expr) + diff2(pitch)
        l_reg = glob.pow(2).sum() + neck.pow(2).sum()
        ((w * err).sum() + w_smooth * l_smooth + w_smooth_face * l_face + w_reg * l_reg).backward()
        opt.step()
        with torch.no_grad():
            pitch.clamp_(0.0, 0.6)
    with torch.no_grad():
        rms = error().sqrt()
        rms[w == 0] = float("nan")
    layer.fold_shape(None)
    motion = np.zeros((T, layout.MOTION_DIM))
    motion[:, layout.EXPRESSION] = to_numpy(expr)
    motion[:, layout.GLOBAL_ORIENT] = to_numpy(glob)
    motion[:, layout.NECK] = to_numpy(neck)
    motion[:, layout.JAW] = to_numpy(_jaw(pitch))
    return SequenceFit(motion, to_numpy(trans), to_numpy(rms))


#: Frames fitted in one batch at most: a fit holds ≈ 24 KB a frame, so a batch stays ≈ 200 MB
#: whatever the take's length (a longer segment is fitted alone, as it was before batching).
FIT_BATCH_FRAMES = 9000


def batch_groups(lengths: Sequence[int], limit: int = FIT_BATCH_FRAMES) -> list[list[int]]:
    """Consecutive segments grouped into batches of at most `limit` frames (a longer one alone)."""
    groups: list[list[int]] = []
    size = 0
    for i, n in enumerate(lengths):
        if groups and size + n <= limit:
            groups[-1].append(i)
            size += n
        else:
            groups.append([i])
            size = n
    return groups


def _batch(segments: list[dict], landmarks: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Segments as one batch of frames: landmarks, each frame's camera (its segment's), confidence,
    and the segments' lengths."""
    lengths = [len(s["confidence"]) for s in segments]
    K = np.concatenate([np.repeat(s["K"][None], n, axis=0) for s, n in zip(segments, lengths, strict=True)])
    return (np.concatenate([s[landmarks] for s in segments]), K, np.concatenate([s["confidence"] for s in segments]),
            lengths)


def _in_batches(segments: list[dict], fit: Callable[[list[dict]], FrameFit | SequenceFit]) -> list:
    """`fit` run on batches of a take's consecutive segments (`batch_groups`), split back per segment:
    one step over many frames costs far less than one step per segment."""
    out = []
    for group in batch_groups([len(s["confidence"]) for s in segments]):
        batch = [segments[i] for i in group]
        out += split_fit(fit(batch), [len(s["confidence"]) for s in batch])
    return out


def concat_fits(fits: list[FrameFit]) -> FrameFit:
    """Per-frame fits of consecutive segments as one."""
    return FrameFit(*(np.concatenate([getattr(f, name) for f in fits]) for name in FrameFit.__dataclass_fields__))


def split_fit(fit: FrameFit | SequenceFit, lengths: Sequence[int]) -> list:
    """A batched fit of consecutive segments of these lengths, back into one fit per segment."""
    cuts = np.cumsum(lengths)[:-1]
    parts = {name: np.split(value, cuts) for name, value in vars(fit).items()}
    return [type(fit)(**{name: p[i] for name, p in parts.items()}) for i in range(len(lengths))]


def project_motion(layer: FlameLayer, shape: np.ndarray, motion: np.ndarray, translation: np.ndarray,
                   K: np.ndarray) -> np.ndarray:
    """(T, 68, 2) portrait pixels of the FLAME landmarks of a fitted sequence."""
    on = tensor_options(layer)
    m = torch.as_tensor(np.array(motion), **on)
    with torch.no_grad():
        lmk = layer.landmarks(torch.as_tensor(np.asarray(shape), **on)[None].expand(len(m), -1),
                              m[:, layout.EXPRESSION], m[:, layout.GLOBAL_ORIENT], m[:, layout.NECK], m[:, layout.JAW])
        return project(to_camera(lmk, torch.as_tensor(np.asarray(translation), **on)),
                       torch.as_tensor(K, **on)).double().cpu().numpy()


def undistort_portrait(lmk: np.ndarray, crop: tuple[int, int, int], size: int, K: np.ndarray,
                       dist: np.ndarray) -> np.ndarray:
    """Portrait landmarks (…, 2) with the colour camera's lens distortion removed (OpenCV model),
    so that the pinhole `portrait_camera` projects onto them."""
    x0, y0, side = crop
    s = side / size
    pts = np.asarray(lmk, dtype=np.float64)
    flat = pts.reshape(-1, 2)
    ok = np.isfinite(flat).all(axis=1)
    out = np.full_like(flat, np.nan)
    if ok.any():
        src = (flat[ok] + 0.5) * s - 0.5 + [x0, y0]
        und = cv2.undistortPoints(src.reshape(-1, 1, 2), K, dist, P=K).reshape(-1, 2)
        out[ok] = (und - [x0, y0] + 0.5) / s - 0.5
    return out.reshape(pts.shape)


# --- per take: files, catalog, Prefect tasks ------------------------------------------------------

STEP_FRAMES = "flame_frames"
STEP_SEQUENCE = "flame_sequence"
VERSION = "5"  # 5: ICT head, box plot on what jumps, fits to < 4 px on real faces
LANDMARK_FIDELITY = 3.0  # keeps motion up to ≈ 10 Hz (syllables), removes frame-to-frame detector jitter


def flame_folder(out: str) -> Path:
    """The FLAME files: SINGINGHEAD_FLAME_DIR, else the ICT head in FLAME's formats, written once under
    the output's `assets/` (a local cache folder when the output is remote)."""
    configured = get_settings().flame_dir
    if configured:
        return Path(configured)
    base = Path(out) / "assets" if files.is_local(out) else Path(tempfile.gettempdir()) / "singinghead-assets"
    folder = base / "flame-ict"
    if not (folder / "generic_model.pkl").is_file():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".flame-"))
        write_model(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another worker published it first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@functools.lru_cache(maxsize=4)
def _model_id(folder: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for name in sorted(p.name for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(name.encode())
        h.update(files.sha256_file(str(Path(folder) / name))[0].encode())
    return h.hexdigest()[:16]


def model_id(folder: Path) -> str:
    """Content hash of the FLAME files (part of every FLAME step's catalog key)."""
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(Path(folder).iterdir()))
    return _model_id(str(folder), stamp)


@functools.lru_cache(maxsize=2)
def flame_layer(folder: str, model: str) -> FlameLayer:
    """The FLAME layer of the fits, on the settings' device (SINGINGHEAD_DEVICE)."""
    return FlameLayer(load_flame(folder)).to(torch_device())


def _load_npz(url: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(files.read_bytes(url))) as data:
        return {k: data[k] for k in data.files}


def _by_segment(refs: list[ArtifactRef], kind: str) -> dict[int, ArtifactRef]:
    return {r.meta["segment_index"]: r for r in refs if r.meta.get("kind") == kind}


def _segment_rows(crop_refs: list[ArtifactRef]) -> tuple[list[dict], str]:
    table = next(r for r in crop_refs if r.meta.get("kind") == "segments")
    return files.read_parquet(table.url).to_pylist(), table.sha256


def _frames_identity(out: str, crop_refs: list[ArtifactRef], steps: int) -> tuple[dict, dict]:
    _, table_sha = _segment_rows(crop_refs)
    dense = _by_segment(crop_refs, "dense_landmarks")
    inputs = {"segments": table_sha, **{f"landmarks_{i:03d}": r.sha256 for i, r in sorted(dense.items())}}
    return {"flame": model_id(flame_folder(out)), "steps": steps}, inputs


def frames_done(out: str, crop_refs: list[ArtifactRef], steps: int) -> list[ArtifactRef] | None:
    done = Catalog(out).lookup(STEP_FRAMES, VERSION, *_frames_identity(out, crop_refs, steps))
    return done.outputs if done is not None else None


def frame_fits_for_take(session_dir: str, session_id: str, take_id: str, video_rel: str,
                        crop_refs: list[ArtifactRef], out: str, steps: int) -> list[ArtifactRef]:
    """Monocular per-frame FLAME fits of every segment of a take (one NPZ per segment), to the crop
    step's dense landmarks, with `steps` Adam steps (the flow's settings: flame_frame_steps)."""
    params, inputs = _frames_identity(out, crop_refs, steps)
    catalog = Catalog(out)
    done = catalog.lookup(STEP_FRAMES, VERSION, params, inputs)
    if done is not None:
        return done.outputs
    key = cache_key(STEP_FRAMES, VERSION, params, inputs)
    out_dir = files.join(out, "sessions", session_id, "takes", take_id, STEP_FRAMES, key[:16])
    folder = flame_folder(out)
    layer = flame_layer(str(folder), params["flame"])
    with KinectRecording(Path(session_dir) / video_rel) as rec:
        calib = rec.calibration()
    rows, _ = _segment_rows(crop_refs)
    dense = _by_segment(crop_refs, "dense_landmarks")
    segments = []
    for row in rows:
        d = _load_npz(dense[row["segment_index"]].url)
        crop = (row["crop_x0"], row["crop_y0"], row["crop_side"])
        d["K"] = portrait_camera(calib.K, crop, row["output_size"])
        d["landmarks"] = undistort_portrait(d["landmarks"], crop, row["output_size"], calib.K, calib.dist)
        segments.append(d)

    def fit_batch(batch: list[dict]) -> FrameFit:
        lmk, K, confidence, _ = _batch(batch, "landmarks")
        return fit_frames(layer, lmk, K, confidence, steps=steps)

    refs = []
    for row, d, fit in zip(rows, segments, _in_batches(segments, fit_batch), strict=True):
        url = files.join(out_dir, row["video"].replace(".mp4", "_frames.npz"))
        with files.atomic_output(url) as tmp:
            np.savez_compressed(tmp, K=d["K"], landmarks=d["landmarks"], confidence=d["confidence"],
                                mouth_opening=d["mouth_opening"], eye_closure=d["eye_closure"],
                                **{k: v for k, v in vars(fit).items()})
        refs.append(files.artifact_ref(url, kind="flame_frames", segment_index=row["segment_index"]))
    catalog.record(STEP_FRAMES, VERSION, params, inputs, refs, meta={"session_id": session_id, "take_id": take_id})
    return refs


def _frame_fit(data: dict[str, np.ndarray]) -> FrameFit:
    return FrameFit(**{f: data[f] for f in FrameFit.__dataclass_fields__})


def subject_shape(frame_refs: list[ArtifactRef], scale: float = SHAPE_OUTLIER_SCALE) -> tuple[np.ndarray, int]:
    """The subject's shape: mean of the per-frame shapes of all its segments, without frames that
    had no landmarks or whose shape is a box-plot outlier. Returns (shape (100,), frames used).
    The same frames give the same shape to the last bit whatever order their files are listed in
    (the shape is part of the sequences' catalog key)."""
    shapes, weights = [], []
    for ref in sorted(frame_refs, key=lambda r: r.url):
        d = _load_npz(ref.url)
        ok = np.isfinite(d["error_px"])
        shapes.append(d["shape"][ok])
        weights.append(d["confidence"][ok])
    if not shapes or sum(len(s) for s in shapes) == 0:
        raise ValueError("no frame with landmarks to estimate the subject's shape from")
    all_shapes, w = np.concatenate(shapes), np.concatenate(weights)
    keep = ~boxplot_outliers(all_shapes, scale, reference="mean")  # a population, not a time series
    return np.average(all_shapes[keep], axis=0, weights=np.maximum(w[keep], 1e-6)), int(keep.sum())


def _sequence_identity(out: str, frame_refs: list[ArtifactRef], shape: np.ndarray, shape_source: str, steps: int
                       ) -> tuple[dict, dict]:
    params = {"flame": model_id(flame_folder(out)), "steps": steps, "outlier_scale": OUTLIER_SCALE,
              "landmark_fidelity": LANDMARK_FIDELITY, "shape_source": shape_source,
              "shape": hashlib.sha256(np.asarray(shape, dtype="<f8").tobytes()).hexdigest()[:16]}
    return params, {f"frames_{r.meta['segment_index']:03d}": r.sha256 for r in frame_refs}


def sequence_done(out: str, frame_refs: list[ArtifactRef], shape: np.ndarray, shape_source: str, steps: int
                  ) -> list[ArtifactRef] | None:
    done = Catalog(out).lookup(STEP_SEQUENCE, VERSION,
                               *_sequence_identity(out, frame_refs, shape, shape_source, steps))
    return done.outputs if done is not None else None


def sequences_for_take(session_id: str, take_id: str, crop_refs: list[ArtifactRef], frame_refs: list[ArtifactRef],
                       shape: np.ndarray, shape_source: str, out: str, steps: int) -> list[ArtifactRef]:
    """Outliers, landmark smoothing and sequence optimisation (`steps` Adam steps: the flow's
    settings, flame_sequence_steps) of every segment of a take with the subject's final shape; one
    motion Parquet per segment and a take summary."""
    shape = np.asarray(shape, dtype=np.float64)
    params, inputs = _sequence_identity(out, frame_refs, shape, shape_source, steps)
    catalog = Catalog(out)
    done = catalog.lookup(STEP_SEQUENCE, VERSION, params, inputs)
    if done is not None:
        return done.outputs
    key = cache_key(STEP_SEQUENCE, VERSION, params, inputs)
    out_dir = files.join(out, "sessions", session_id, "takes", take_id, STEP_SEQUENCE, key[:16])
    folder = flame_folder(out)
    layer = flame_layer(str(folder), params["flame"])
    rows, _ = _segment_rows(crop_refs)
    fits = _by_segment(frame_refs, "flame_frames")
    summary, tracked = [], []
    for row in rows:
        d = _load_npz(fits[row["segment_index"]].url)
        missing = ~np.isfinite(d["landmarks"]).all(axis=(1, 2))
        if missing.all():  # the face was never found in the portrait: nothing to track
            summary.append({"segment_index": row["segment_index"], "video": row["video"], "frames": len(missing),
                            "frames_without_landmarks": int(missing.sum()), "outlier_frames": {},
                            "reprojection_px": {"median": None, "p95": None},
                            "skipped": "no landmarks in any frame"})
            continue
        init, flags = replace_frame_outliers(_frame_fit(d), OUTLIER_SCALE)
        confidence = np.where(missing, 0.0, d["confidence"])
        filled = replace_outliers(d["landmarks"], missing)  # gaps bridged; they carry no weight
        tracked.append({"row": row, "data": d, "missing": missing, "flags": flags, "init": init, "K": d["K"],
                        "confidence": confidence,
                        "smoothed": smooth_landmarks(filled, confidence, fidelity=LANDMARK_FIDELITY)})

    def fit_batch(batch: list[dict]) -> SequenceFit:  # each segment smooth within itself only
        lmk, K, confidence, lengths = _batch(batch, "smoothed")
        return fit_sequence(layer, lmk, K, shape, concat_fits([t["init"] for t in batch]), confidence,
                            steps=steps, lengths=lengths)

    refs = []
    for t, seq in zip(tracked, _in_batches(tracked, fit_batch), strict=True):
        row, d, missing, flags = t["row"], t["data"], t["missing"], t["flags"]
        fitted = project_motion(layer, shape, seq.motion, seq.translation, d["K"])
        error = np.sqrt(((fitted - d["landmarks"]) ** 2).sum(-1).mean(-1))  # against the detections
        url = files.join(out_dir, row["video"].replace(".mp4", "_motion.parquet"))
        _write_motion(url, row, seq, d, error, flags, shape, shape_source, params["flame"])
        refs.append(files.artifact_ref(url, kind="motion", segment_index=row["segment_index"]))
        finite = error[np.isfinite(error)]
        summary.append({
            "segment_index": row["segment_index"], "video": row["video"], "frames": len(error),
            "frames_without_landmarks": int(missing.sum()),
            "outlier_frames": {name: int(mask.sum()) for name, mask in flags.items()},
            "reprojection_px": {"median": float(np.median(finite)) if len(finite) else None,
                                "p95": float(np.percentile(finite, 95)) if len(finite) else None},
        })
    summary.sort(key=lambda entry: entry["segment_index"])
    report = files.write_json_atomic(files.join(out_dir, "motion_summary.json"),
                                     {"take_id": take_id, "shape_source": shape_source, "segments": summary})
    report.meta = {"kind": "motion_summary"}
    refs.append(report)
    catalog.record(STEP_SEQUENCE, VERSION, params, inputs, refs, meta={"session_id": session_id, "take_id": take_id})
    return refs


def _write_motion(url: str, row: dict, seq: SequenceFit, d: dict, error: np.ndarray, flags: dict[str, np.ndarray],
                  shape: np.ndarray, shape_source: str, flame_model: str) -> None:
    T = len(seq.motion)
    K = d["K"]
    names = sorted(flags)
    table = pa.table({
        "take_id": [row["take_id"]] * T,
        "segment_index": np.full(T, row["segment_index"], dtype=np.int32),
        "frame": np.arange(T, dtype=np.int32),
        "source_frame": np.arange(row["frame_start"], row["frame_start"] + T, dtype=np.int32),
        "timestamp_s": np.asarray(row["timestamps_s"][:T], dtype=np.float64),
        "motion": list(seq.motion.astype(np.float32)),
        "translation": list(seq.translation.astype(np.float32)),
        "camera": [np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], dtype=np.float32)] * T,
        "reprojection_error_px": error.astype(np.float32),
        "landmarks": list(d["landmarks"].reshape(T, -1).astype(np.float32)),
        "landmark_confidence": d["confidence"].astype(np.float32),
        "mouth_opening": d["mouth_opening"].astype(np.float32),
        "eye_closure": list(d["eye_closure"].astype(np.float32)),
        "outliers": [[n for n in names if flags[n][t]] for t in range(T)],
    }, schema=layout.MOTION_SCHEMA.with_metadata({
        "shape": json.dumps([float(x) for x in shape]), "shape_source": shape_source, "flame_model": flame_model,
    }))
    with files.atomic_output(url) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_motion(url: str) -> tuple[pa.Table, np.ndarray]:
    """A motion table and the subject shape stored in its metadata."""
    table = files.read_parquet(url)
    return table, np.asarray(json.loads(table.schema.metadata[b"shape"]))


@task(name="flame-frames", task_run_name="flame-frames-{take_id}", retries=1, retry_delay_seconds=2)
def frame_fits_task(session_dir: str, session_id: str, take_id: str, video_rel: str, crop_refs: list[ArtifactRef],
                    out: str, steps: int) -> list[ArtifactRef]:
    return frame_fits_for_take(session_dir, session_id, take_id, video_rel, crop_refs, out, steps)


@task(name="flame-sequence", task_run_name="flame-sequence-{take_id}", retries=1,
      retry_delay_seconds=2)
def sequences_task(session_id: str, take_id: str, crop_refs: list[ArtifactRef], frame_refs: list[ArtifactRef],
                   shape: list[float], shape_source: str, out: str, steps: int) -> list[ArtifactRef]:
    return sequences_for_take(session_id, take_id, crop_refs, frame_refs, np.asarray(shape), shape_source, out,
                              steps)


def read_motion_summary(refs: list[ArtifactRef]) -> dict:
    return files.read_json(next(r for r in refs if r.meta.get("kind") == "motion_summary").url)
