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
