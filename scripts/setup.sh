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
# --no-compile: Python compiles a module when it is first imported, so only the modules used are
# compiled (pip would compile all of the ~8 GB installed, 45 s of a 190 s setup here).
pip_install() {  # quiet unless pip fails; then show its output
  local log
  log=$(mktemp)
  if ! "$VENV/bin/pip" install -q --no-compile --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2
    rm -f "$log"
    echo "setup: pip install $* failed" >&2
    exit 1
  fi
  rm -f "$log"
}
pip_install -r requirements.lock
# facenet-pytorch pins an old torch and numpy; its code runs fine on ours.
pip_install --no-deps facenet-pytorch==2.6.0
pip_install --no-deps --no-build-isolation -e .
echo "$want" > "$STAMP"
echo "setup: $VENV is ready"
