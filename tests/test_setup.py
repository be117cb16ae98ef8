"""What `make setup` leaves behind for every later process."""
from __future__ import annotations

import os
import subprocess
import sys


def test_librosa_gufuncs_load_from_the_cache_setup_compiled():
    """Setup compiles librosa's numba gufuncs once: a process that imports them must only load
    them. One compiling (and caching) them beside other processes can leave a kernel and wrapper
    that do not match, and the next call segfaults (numba issue #10128)."""
    env = {**os.environ, "NUMBA_DEBUG_CACHE": "1"}
    out = subprocess.run([sys.executable, "-c", "import librosa.beat, librosa.util.utils"], env=env,
                         capture_output=True, text=True, check=True)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("[cache]")]
    assert any("guf-utils._localmax" in line for line in lines), out.stdout[-2000:]
    assert all(" loaded from " in line for line in lines), [x for x in lines if " loaded from " not in x]
