"""A ready-made head scan (Metashape, 3dMD, a structured-light scanner…) read as the lab has it.

The scan is a triangle mesh (OBJ or PLY) in stated units (m, cm or mm; converted to metres here),
with, when the file has them, a UV texture (OBJ + MTL + one image) or vertex colours: views rendered
for landmark detection need one of the two. Its 68 landmarks, when the lab has them, come as
- LJSON (menpo's format with the iBUG label groups chin, leye, reye, leyebrow, nose, reyebrow,
  mouth; reordered here to dlib's order, `LJSON_TO_DLIB`), or
- text (`.txt`, `.csv`, `.xyz`): 68 lines `x y z` (spaces or commas) in dlib's order and the
  scan's units.
A unit that makes the head implausibly large or small is refused with the unit that fits.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
from scipy import ndimage

from singinghead.schemas.errors import InputError

#: dlib index i ← LJSON index LJSON_TO_DLIB[i]
LJSON_TO_DLIB = np.r_[0:17, 29:34, 43:48, 34:43, 17:23, 23:29, 48:68]
UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}
#: A scan of a face or a head (with neck and shoulders at most) spans this much, in metres.
HEAD_EXTENT_M = (0.08, 1.0)


@dataclass(frozen=True)
class HeadScan:
    vertices: np.ndarray  # (V, 3) metres
    triangles: np.ndarray  # (F, 3)
    landmarks: np.ndarray | None = None  # (68, 3) metres, dlib order
    triangle_uvs: np.ndarray | None = None  # (F, 3, 2) as open3d reads them (v down the image)
    texture: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    vertex_colours: np.ndarray | None = None  # (V, 3) in [0, 1]

    @property
    def has_colour(self) -> bool:
        return self.texture is not None or self.vertex_colours is not None

    def colour_at(self, triangle: np.ndarray, bary_uv: np.ndarray) -> np.ndarray | None:
        """RGB in [0, 1] at ray hits (triangle ids, open3d's barycentric (u, v)); None if uncoloured."""
        w = np.stack([1.0 - bary_uv[:, 0] - bary_uv[:, 1], bary_uv[:, 0], bary_uv[:, 1]], axis=1)
        if self.texture is not None:
            uv = np.einsum("nc,ncx->nx", w, self.triangle_uvs[triangle])
            h, wd = self.texture.shape[:2]
            x, y = uv[:, 0] * wd - 0.5, uv[:, 1] * h - 0.5
            tex = self.texture.astype(np.float32) / 255.0
            return np.stack([ndimage.map_coordinates(tex[:, :, c], [y, x], order=1, mode="reflect")
                             for c in range(3)], axis=1)
        if self.vertex_colours is not None:
            return np.einsum("nc,ncx->nx", w, self.vertex_colours[self.triangles[triangle]])
        return None

    def moved(self, shift: np.ndarray) -> HeadScan:
        return HeadScan(self.vertices + shift, self.triangles,
                        None if self.landmarks is None else self.landmarks + shift,
                        self.triangle_uvs, self.texture, self.vertex_colours)


def read_ljson(path: str | Path) -> np.ndarray:
    """(68, 3) landmarks of an LJSON v3 file with the iBUG label groups, in dlib's order."""
    try:
        groups = json.loads(Path(path).read_text())["groups"]
        points = np.asarray(next(iter(groups.values()))["landmarks"]["points"], dtype=np.float64)
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise InputError(path, f"not an LJSON landmark file ({exc})") from None
    if points.shape != (68, 3):
        raise InputError(path, f"expected 68 3D landmarks, found an array of shape {points.shape}")
    return points[LJSON_TO_DLIB]


def read_landmarks(path: str | Path) -> np.ndarray:
    """(68, 3) landmarks in dlib's order, in the file's units (LJSON or 68 lines of x y z)."""
    path = Path(path)
    if path.suffix.lower() == ".ljson":
        return read_ljson(path)
    try:
        rows = [r for r in (re.split(r"[,\s]+", ln.strip()) for ln in path.read_text().splitlines())
                if r != [""] and not r[0].startswith("#")]
        points = np.asarray(rows, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"landmarks must be 68 lines of x y z numbers ({exc})") from None
    if points.shape != (68, 3) or not np.isfinite(points).all():
        raise InputError(path, f"landmarks must be 68 lines of x y z numbers (dlib's order); found {points.shape}")
    return points


def check_head_units(vertices_m: np.ndarray, path: str | Path, units: str) -> float:
    """The scan's extent in metres; a unit that makes it no head is refused with the one that fits."""
    extent = float(np.ptp(vertices_m, axis=0).max())
    lo, hi = HEAD_EXTENT_M
    if not lo <= extent <= hi:
        raw = extent / UNITS[units]
        fits = [u for u, s in UNITS.items() if lo <= raw * s <= hi]
        hint = f"; in {fits[0]} it would be a head" if fits else ""
        raise InputError(path, f"with units {units!r} the scan spans {extent:.4g} m, but a head scan spans "
                               f"{lo}–{hi} m{hint}: check light_stage.units")
    return extent


def companion_files(path: str | Path) -> list[Path]:
    """The files an OBJ reads besides itself (its MTL libraries and their texture images)."""
    path = Path(path)
    if path.suffix.lower() != ".obj":
        return []
    out = []
    with open(path, errors="replace") as f:
        mtls = [path.parent / ln.split(maxsplit=1)[1].strip() for ln in f if ln.startswith("mtllib ")]
    for mtl in mtls:
        if mtl.is_file():
            out.append(mtl)
            for ln in mtl.read_text(errors="replace").splitlines():
                if ln.strip().startswith("map_Kd "):
                    image = mtl.parent / ln.strip().split(maxsplit=1)[1]
                    if image.is_file():
                        out.append(image)
    return out


def read_scan(path: str | Path, units: str, landmarks: str | Path | None = None) -> HeadScan:
    """A scan file in metres with its texture or vertex colours and its landmarks when given."""
    path = Path(path)
    if units not in UNITS:
        raise InputError(path, f"unknown units {units!r}; expected one of {', '.join(UNITS)}")
    if path.suffix.lower() not in (".obj", ".ply"):
        raise InputError(path, "a scan must be a triangle mesh in OBJ or PLY format")
    if not path.is_file():
        raise InputError(path, "scan file not found")
    mesh = o3d.io.read_triangle_mesh(str(path), True)
    if not mesh.has_triangles():
        raise InputError(path, "no triangles read: a scan must be a triangle mesh (OBJ or PLY), not a point cloud")
    mesh.remove_duplicated_vertices()  # OBJ corners split per texture seam: one surface, for holes and fits
    tri = np.asarray(mesh.triangles, dtype=np.int64)
    vertices = np.asarray(mesh.vertices, dtype=np.float64) * UNITS[units]
    check_head_units(vertices, path, units)
    uvs = texture = colours = None
    if len(mesh.textures) > 1 and landmarks is None:  # renders would mix up the atlases' texels
        raise InputError(path, f"{len(mesh.textures)} texture images: one texture atlas is supported for finding "
                               "landmarks; re-export the scan with one texture, or give its landmarks")
    if mesh.has_triangle_uvs() and mesh.textures and np.asarray(mesh.textures[0]).size != 0:
        texture = np.asarray(mesh.textures[0])
        texture = cv2.cvtColor(texture, cv2.COLOR_GRAY2RGB) if texture.ndim == 2 else texture[:, :, :3].copy()
        uvs = np.asarray(mesh.triangle_uvs).reshape(len(tri), 3, 2)
    elif mesh.has_vertex_colors():
        colours = np.asarray(mesh.vertex_colors, dtype=np.float64)
    lmk = None if landmarks is None else read_landmarks(landmarks) * UNITS[units]
    return HeadScan(vertices, tri, lmk, uvs, texture, colours)
