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
    return 1
  fi
  rm -f "$log"
}
# The lock is a complete pip freeze, so nothing is left to resolve: --no-deps. pip installs one
# package at a time and mostly waits on the index for the small ones, so the lock goes in five
# parts side by side: torch with its CUDA wheels (5 GB to unpack) and four quarters of the rest
# (about 110 s here, against 280 s for one resolving pip). `pip check` then proves the lock whole.
parts=$(mktemp -d)
trap 'rm -rf "$parts"' EXIT
grep -v -E '^[[:space:]]*(#|$)' requirements.lock > "$parts/all"
grep -E '^(torch|triton|nvidia-)' "$parts/all" > "$parts/p0" || true
grep -v -E '^(torch|triton|nvidia-)' "$parts/all" | awk -v d="$parts" '{print > (d "/p" (NR % 4 + 1))}'
pids=()
for part in "$parts"/p*; do
  pip_install --no-deps -r "$part" & pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || { echo "setup: installing requirements.lock failed" >&2; exit 1; }
check=$("$VENV/bin/pip" check --disable-pip-version-check 2>&1) || {
  echo "$check" >&2; echo "setup: requirements.lock is not self-consistent" >&2; exit 1; }
# facenet-pytorch pins an old torch and numpy; its code runs fine on ours.
pip_install --no-deps facenet-pytorch==2.6.0 || exit 1
pip_install --no-deps --no-build-isolation -e . || exit 1
echo "$want" > "$STAMP"
echo "setup: $VENV is ready"
