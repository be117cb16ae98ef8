"""Middlebury multi-view stereo sets (Seitz et al. 2006) as light-stage rigs: real calibrated photos.

A set's `<name>_par.txt` lists per image `name k11 … k33 r11 … r33 t1 t2 t3` with P = K [R t]
(OpenCV axes, metres, image origin top-left); its README gives the object's tight bounding box.
`rig_json` writes the rig's documented JSON calibration for them, so the photogrammetry step
runs on them unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image


def read_par(par_file: str | Path) -> list[dict]:
    """Camera entries in the rig's JSON form (undistorted photos: no distortion)."""
    par_file = Path(par_file)
    lines = par_file.read_text().split("\n")
    cams = []
    for line in lines[1: 1 + int(lines[0])]:
        parts = line.split()
        v = np.array([float(x) for x in parts[1:]])
        K, R, t = v[:9].reshape(3, 3), v[9:18].reshape(3, 3), v[18:21]
        with Image.open(par_file.parent / parts[0]) as im:
            width, height = im.size
        cams.append({"id": Path(parts[0]).stem, "image": parts[0], "width": width, "height": height,
                     "fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "distortion": [0, 0, 0, 0],
                     "R": R.tolist(), "t": t.tolist()})
    return cams


def rig_json(par_file: str | Path, out: str | Path) -> Path:
    out = Path(out)
    out.write_text(json.dumps({"units": "m", "convention": "OpenCV: x_cam = R · x_world + t",
                               "cameras": read_par(par_file)}, indent=1))
    return out


def bounding_box(readme: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The object's tight bounding box (min, max corners) from the set's README."""
    triples = re.findall(r"\(\s*([-\d.eE]+)\s+([-\d.eE]+)\s+([-\d.eE]+)\s*\)", Path(readme).read_text())
    lo, hi = (np.array([float(x) for x in t]) for t in triples[:2])
    return lo, hi
