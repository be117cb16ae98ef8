#!/usr/bin/env bash
# Create or refresh .venv so that `make demo` and `make test` work on a fresh machine.
# Idempotent: a stamp holding the hash of the dependency files makes a second run take
# well under a second. System packages are installed with apt-get when we are root, or
# the script stops with the exact command to run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.setup-stamp"
want=$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

# --- system packages -------------------------------------------------------------------
# libusb-1.0 is needed by open3d (scan meshing); everything else (ffmpeg via imageio-ffmpeg,
# PyAV's own FFmpeg libraries) comes from wheels.
missing=()
# (grep reads all of ldconfig's output: with pipefail, an early `grep -q` exit would look like a miss)
libs=$(ldconfig -p 2>/dev/null || true)
grep -F 'libusb-1.0.so' >/dev/null <<<"$libs" || missing+=(libusb-1.0-0)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${missing[*]}" >&2
    echo "setup: run:  sudo apt-get install -y ${missing[*]}   and then re-run make." >&2
    exit 1
  fi
fi

# --- python environment ------------------------------------------------------------------
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"setup: singinghead needs Python 3.11 (found {sys.version.split()[0]}); set PYTHON=/path/to/python3.11")
PY
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "setup: installing pinned dependencies into $VENV (first run takes a few minutes)"
# uv installs everything: it unpacks wheels in parallel and links them from its cache (a fresh
# .venv in 53 s here with an empty cache, 11 s with a warm one, against 107 s for five pip
# processes side by side). It is itself installed with pip, and does not read pip's
# configuration, so the indexes, find-links, constraints and certificate pip is configured with
# (its PIP_* environment, else its configuration files) are handed to it; with several indexes
# every one is considered, as pip does, the first listed winning a tie (the order is given below).
# Like `pip --no-compile`, uv leaves bytecode to the first import, so only the modules
# used are compiled.
quietly() {  # run a command; show its output only when it fails
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "setup: $* failed" >&2
    return 1
  fi
  rm -f "$log"
}
quietly "$VENV/bin/pip" install -q --no-compile --disable-pip-version-check uv==0.13.9
pip_config=$("$VENV/bin/pip" config list 2>/dev/null || true)  # lines key='value', ":env:." for PIP_*
pip_setting() {  # pip's value for a setting: its environment variable, else its configuration
  local line       # files' [install] section, else their [global] one (pip's own precedence)
  line=$(grep -m1 -E "^:env:\.$1=" <<<"$pip_config" || grep -m1 -E "^install\.$1=" <<<"$pip_config" ||
         grep -m1 -E "^global\.$1=" <<<"$pip_config" || true)
  line=${line#*=}; line=${line#\'}; echo "${line%\'}"
}
uv_install=("$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps --index-strategy unsafe-best-match)
for links in $(pip_setting find-links); do uv_install+=(--find-links "$links"); done
for constraint in $(pip_setting constraint); do uv_install+=(--constraint "$constraint"); done
cert=$(pip_setting cert)
[ -z "$cert" ] || export SSL_CERT_FILE="$cert"
main=$(pip_setting index-url)
main=${main:-https://pypi.org/simple}
mirrors=()
for url in $(pip_setting extra-index-url); do mirrors+=(--index "$url"); done
# uv takes a release found on several indexes from the first one listed (pip takes the best wheel
# of all): torch and its CUDA wheels (5 GB) from a local mirror when pip has one, everything
# else from the main index first, so each package gets the wheel pip would pick (a mirror may
# hold only a pure-Python wheel: soundfile's without libsndfile). The lock is a complete freeze,
# so nothing is left to resolve (--no-deps); `uv pip check` then proves it whole.
lock=$(mktemp -d)
trap 'rm -rf "$lock"' EXIT
grep -v -E '^[[:space:]]*(#|$)' requirements.lock > "$lock/all"
torch='^((torch|torchvision|triton)==|nvidia-)'
grep -E "$torch" "$lock/all" > "$lock/torch" || true
grep -v -E "$torch" "$lock/all" > "$lock/rest" || true
main_first=(--index "$main" "${mirrors[@]}" --default-index "$main")
quietly "${uv_install[@]}" "${mirrors[@]}" --default-index "$main" -r "$lock/torch" || exit 1
quietly "${uv_install[@]}" "${main_first[@]}" -r "$lock/rest" || exit 1
# (facenet-pytorch, installed below against its pins, is set aside while the lock is checked)
"$VENV/bin/uv" pip uninstall -q --python "$VENV/bin/python" facenet-pytorch >/dev/null 2>&1 || true
quietly "$VENV/bin/uv" pip check --python "$VENV/bin/python" || {
  echo "setup: requirements.lock is not self-consistent" >&2; exit 1; }
# facenet-pytorch pins an old torch and numpy; its code runs fine on ours.
quietly "${uv_install[@]}" "${main_first[@]}" facenet-pytorch==2.6.0 || exit 1
quietly "${uv_install[@]}" --no-build-isolation -e . || exit 1
# librosa compiles its numba kernels when it imports them or at their first call, and caches
# them beside its sources. Processes compiling them at the same moment (a fresh .venv's first
# Dask workers and flow runs) can cache a gufunc's kernel and its wrapper from different
# compilations, whose symbols do not match; a process that loads such a pair dies of a
# segmentation fault at its first call (numba issue #10128; it killed a clean-clone `make test`).
# So the kernels singinghead's librosa calls use are compiled here, once, by one process, after
# any cache an earlier install left is cleared: later processes only read them
# (tests/test_setup.py makes those calls and checks that nothing compiles). librosa.beat's,
# which nothing here calls, are left out (about 15 s of compiling).
quietly "$VENV/bin/python" - <<'PY' || exit 1
import importlib.util
from pathlib import Path

root = Path(importlib.util.find_spec("librosa").origin).parent
for cached in [*root.rglob("__pycache__/*.nbi"), *root.rglob("__pycache__/*.nbc")]:
    cached.unlink()
import librosa.core.audio  # noqa: E402,F401  (zero crossings)
import librosa.core.pitch  # noqa: E402,F401  (parabolic interpolation: yin)
import librosa.util.utils  # noqa: E402,F401  (localmax, localmin, peak_pick, ...)
import numpy as np  # noqa: E402

import librosa  # noqa: E402

librosa.istft(librosa.stft(np.zeros(8192, np.float32)))  # overlap-add, window sum-square: at first call
PY
echo "$want" > "$STAMP"
echo "setup: $VENV is ready"
