"""The light stage: one photo per calibrated camera (51 views in the lab's rig).

Calibration comes in one of two forms:
- COLMAP text (`cameras.txt` + `images.txt`, the folder given as `calibration`), PINHOLE,
  SIMPLE_RADIAL, RADIAL or OPENCV cameras; the image name is the photo's file name;
- JSON (`calibration.json`): `{"units": "m", "cameras": [{"id", "image", "width", "height",
  "fx", "fy", "cx", "cy", "distortion": [k1, k2, p1, p2], "R": 3×3, "t": 3}]}` with OpenCV
  axes, x_cam = R·x_world + t, pixel centres at integer coordinates (COLMAP's convention
  shifted by half a pixel; the adapter converts).

`load_rig` checks that camera ids are unique, that every photo's size matches its calibration
and reports missing photos by camera id (the rest is used; fewer than MIN_VIEWS is an error).
Units are metres: a rig whose camera centres are metres apart in millimetres is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from singinghead.schemas.errors import InputError

MIN_VIEWS = 8
_COLMAP_MODELS = {  # params → fx, fy, cx, cy, (k1, k2, p1, p2)
    "SIMPLE_PINHOLE": lambda p: (p[0], p[0], p[1], p[2], (0, 0, 0, 0)),
    "PINHOLE": lambda p: (p[0], p[1], p[2], p[3], (0, 0, 0, 0)),
    "SIMPLE_RADIAL": lambda p: (p[0], p[0], p[1], p[2], (p[3], 0, 0, 0)),
    "RADIAL": lambda p: (p[0], p[0], p[1], p[2], (p[3], p[4], 0, 0)),
    "OPENCV": lambda p: (p[0], p[1], p[2], p[3], tuple(p[4:8])),
}


@dataclass(frozen=True)
class RigCamera:
    id: str
    image: Path
    width: int
    height: int
    K: np.ndarray  # 3×3, OpenCV pixel centres
    distortion: np.ndarray  # k1, k2, p1, p2
    R: np.ndarray  # world → camera
    t: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        return -self.R.T @ self.t

    @property
    def P(self) -> np.ndarray:
        """3×4 projection of undistorted pixels."""
        return self.K @ np.concatenate([self.R, self.t[:, None]], axis=1)


@dataclass
class LightStageRig:
    calibration: Path
    cameras: list[RigCamera]
    missing: list[str] = field(default_factory=list)  # camera ids without a photo

    def report(self) -> dict:
        return {"calibration": str(self.calibration), "views": len(self.cameras), "missing_views": self.missing}


def _from_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable light-stage calibration: {exc}") from exc
    if data.get("units", "m") != "m":
        raise InputError(path, f"calibration units {data.get('units')!r}: give camera translations in metres")
    return data.get("cameras", [])


def _from_colmap(folder: Path) -> list[dict]:
    """cameras.txt + images.txt (COLMAP's text model; quaternions w, x, y, z; pixel centres at .5)."""
    from scipy.spatial.transform import Rotation

    cams, out = {}, []
    for line in (folder / "cameras.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            cid, model, w, h, *params = line.split()
            if model not in _COLMAP_MODELS:
                raise InputError(folder / "cameras.txt", f"camera {cid}: unsupported model {model}")
            fx, fy, cx, cy, dist = _COLMAP_MODELS[model]([float(p) for p in params])
            cams[cid] = {"width": int(w), "height": int(h), "fx": fx, "fy": fy, "cx": cx - 0.5, "cy": cy - 0.5,
                         "distortion": list(dist)}
    lines = [ln for ln in (folder / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    for line in lines[::2]:  # every image line is followed by its (possibly empty) 2D points line
        if not line.strip():
            continue
        _, qw, qx, qy, qz, tx, ty, tz, cid, name = line.split()[:10]
        R = Rotation.from_quat([float(qx), float(qy), float(qz), float(qw)]).as_matrix()
        out.append({"id": Path(name).stem, "image": name, **cams[cid], "R": R.tolist(),
                    "t": [float(tx), float(ty), float(tz)]})
    return out


def load_rig(photos: str | Path, calibration: str | Path) -> LightStageRig:
    """The usable views of a light-stage capture, validated (see the module docstring)."""
    photos, calibration = Path(photos), Path(calibration)
    entries = _from_colmap(calibration) if calibration.is_dir() else _from_json(calibration)
    ids = [str(e["id"]) for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(calibration, f"duplicate camera ids: {', '.join(duplicates)}")
    cameras, missing = [], []
    for e in entries:
        image = photos / e["image"]
        if not image.is_file():
            missing.append(str(e["id"]))
            continue
        try:
            with Image.open(image) as im:
                size = im.size
        except OSError as exc:
            raise InputError(image, f"unreadable light-stage photo: {exc}") from exc
        if size != (int(e["width"]), int(e["height"])):
            raise InputError(image, f"photo is {size[0]}×{size[1]} but camera {e['id']} is calibrated for "
                                    f"{e['width']}×{e['height']}")
        K = np.array([[e["fx"], 0, e["cx"]], [0, e["fy"], e["cy"]], [0, 0, 1]], dtype=np.float64)
        R = np.asarray(e["R"], dtype=np.float64)
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-5):
            raise InputError(calibration, f"camera {e['id']}: R is not a rotation")
        cameras.append(RigCamera(str(e["id"]), image, int(e["width"]), int(e["height"]), K,
                                 np.asarray(e.get("distortion", [0, 0, 0, 0]), dtype=np.float64)[:4], R,
                                 np.asarray(e["t"], dtype=np.float64)))
    if len(cameras) < MIN_VIEWS:
        raise InputError(photos, f"only {len(cameras)} light-stage views usable (missing: {', '.join(missing)}); "
                                 f"at least {MIN_VIEWS} are needed")
    spread = np.ptp(np.stack([c.centre for c in cameras]), axis=0).max()
    if spread > 20.0:
        raise InputError(calibration, f"camera centres span {spread:.0f} units: the rig looks like millimetres; "
                                      "give translations in metres")
    return LightStageRig(calibration, cameras, missing)
