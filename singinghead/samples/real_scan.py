"""A real textured face scan with 3D landmarks, as test truth nobody on this project made.

`../shared/data/face_scan/james.*` (menpo3d, BSD-3): an OBJ in millimetres with a UV texture
atlas and 68 landmarks in LJSON, read by `capture_rigs.scan_files` like any lab's scan. The LJSON
lists its points by label group (chin, leye, reye, leyebrow, nose, reyebrow, mouth), not in dlib's
order; `scan_files.LJSON_TO_DLIB` reorders them (checked
on the scan: y up, the face towards +z, "l" groups at −x, i.e. the image's left as in dlib, and
within each group the iBUG order: eyes from the outer corner over the upper lid, brows and
mouth from the image's left).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from singinghead.capture_rigs.scan_files import HeadScan, read_scan
from singinghead.schemas.errors import InputError


def load_textured_scan(obj: str | Path, landmarks: str | Path, units: str = "mm") -> HeadScan:
    """An OBJ with its texture and LJSON landmarks, in metres."""
    scan = read_scan(obj, units, landmarks)
    if scan.texture is None:
        raise InputError(obj, "a triangle mesh with UV coordinates and a texture image is needed")
    return scan


def placed(scan: HeadScan, centre: np.ndarray) -> HeadScan:
    """The scan moved (no rotation) so that its landmarks' centroid sits at `centre`."""
    return scan.moved(np.asarray(centre) - scan.landmarks.mean(axis=0))
