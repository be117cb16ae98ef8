"""What `make setup` leaves behind for every later process."""
from __future__ import annotations

import os
import subprocess
import sys

#: Every librosa call of singinghead, on a few seconds of noise (in a fresh process).
LIBROSA_CALLS = """
import numpy as np
from singinghead.features.audio import bgm_mfcc_per_frame, mfcc26, musicface_mfcc_windows
from singinghead.tasks import syncnet
from singinghead.tasks.audio_sync import song_offset
from singinghead.tasks.stats import singing_stats
from singinghead.tasks.vocal_removal import separate_builtin
from singinghead.trainer.metrics.beat import audio_beats

y = np.random.default_rng(0).normal(0.0, 0.1, 16000 * 4).astype(np.float32)
singing_stats(y, 16000)
separate_builtin(np.stack([y, y], 1), 16000)
song_offset(y, 16000, y, 16000)
audio_beats(y)
bgm_mfcc_per_frame(y, 120)
mfcc26(y)
musicface_mfcc_windows(y, 120)
syncnet.mfcc(y, 44100)
"""


def test_librosa_kernels_load_from_the_cache_setup_compiled():
    """Setup compiles librosa's numba kernels once: a process making singinghead's librosa calls
    must only load them, never compile one (those compiled at a first call included, as istft's).
    One compiling (and caching) them beside other processes can leave a kernel and wrapper that
    do not match, and the next call segfaults (numba issue #10128). A new librosa call belongs
    in LIBROSA_CALLS (and, when it compiles a kernel, in setup)."""
    env = {**os.environ, "NUMBA_DEBUG_CACHE": "1"}
    out = subprocess.run([sys.executable, "-c", LIBROSA_CALLS], env=env, capture_output=True, text=True, check=True)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("[cache]")]
    for kernel in ("guf-utils._localmax", "spectrum.__overlap_add", "guf-pitch._pi_wrapper"):
        assert any(kernel in line for line in lines), (kernel, out.stdout[-2000:])
    assert all(" loaded from " in line for line in lines), [x for x in lines if " loaded from " not in x]
