"""A real textured face scan with 3D landmarks, as test truth nobody on this project made.

`../shared/data/face_scan/james.*` (menpo3d, BSD-3): an OBJ in millimetres with a UV texture
atlas and 68 landmarks in LJSON. The LJSON lists its points by label group (chin, leye, reye,
leyebrow, nose, reyebrow, mouth), not in dlib's order; `LJSON_TO_DLIB` reorders them (checked
on the scan: y up, the face towards +z, "l" groups at −x, i.e. the image's left as in dlib, and
within each group the iBUG order: eyes from the outer corner over the upper lid, brows and
mouth from the image's left).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d

from singinghead.schemas.errors import InputError

#: dlib index i ← LJSON index LJSON_TO_DLIB[i]
LJSON_TO_DLIB = np.r_[0:17, 29:34, 43:48, 34:43, 17:23, 23:29, 48:68]
UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}


@dataclass(frozen=True)
class TexturedScan:
    vertices: np.ndarray  # (V, 3) metres
    triangles: np.ndarray  # (F, 3)
    triangle_uvs: np.ndarray  # (F, 3, 2) texture coordinates as open3d reads them (v down the image)
    texture: np.ndarray  # (H, W, 3) uint8 RGB
    landmarks: np.ndarray  # (68, 3) metres, dlib order


def read_ljson(path: str | Path) -> np.ndarray:
    """(68, 3) landmarks of an LJSON v3 file with the iBUG label groups, in dlib's order."""
    try:
        groups = json.loads(Path(path).read_text())["groups"]
        points = np.asarray(next(iter(groups.values()))["landmarks"]["points"], dtype=np.float64)
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise InputError(f"{path}: not an LJSON landmark file ({exc})") from None
    if points.shape != (68, 3):
        raise InputError(f"{path}: expected 68 3D landmarks, found {points.shape}")
    return points[LJSON_TO_DLIB]


def load_textured_scan(obj: str | Path, landmarks: str | Path, units: str = "mm") -> TexturedScan:
    """An OBJ with its texture and LJSON landmarks, in metres."""
    if units not in UNITS:
        raise InputError(f"{obj}: unknown units {units!r}; expected one of {', '.join(UNITS)}")
    mesh = o3d.io.read_triangle_mesh(str(obj), True)
    if not mesh.has_triangles() or not mesh.has_triangle_uvs() or not mesh.textures:
        raise InputError(f"{obj}: a triangle mesh with UV coordinates and a texture image is needed")
    texture = np.asarray(mesh.textures[0])
    if texture.ndim == 2:
        texture = cv2.cvtColor(texture, cv2.COLOR_GRAY2RGB)
    s = UNITS[units]
    tri = np.asarray(mesh.triangles, dtype=np.int64)
    return TexturedScan(np.asarray(mesh.vertices) * s, tri, np.asarray(mesh.triangle_uvs).reshape(len(tri), 3, 2),
                        texture[:, :, :3].copy(), read_ljson(landmarks) * s)


def placed(scan: TexturedScan, centre: np.ndarray) -> TexturedScan:
    """The scan moved (no rotation) so that its landmarks' centroid sits at `centre`."""
    shift = np.asarray(centre) - scan.landmarks.mean(axis=0)
    return TexturedScan(scan.vertices + shift, scan.triangles, scan.triangle_uvs, scan.texture,
                        scan.landmarks + shift)
