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
# The lock is a complete pip freeze, so nothing is left to resolve: --no-deps. uv installs it: it
# unpacks wheels in parallel and links them from its cache (a fresh .venv in 35 s here with an
# empty cache, 2 s with a warm one, against 85 s for five pip processes side by side). uv does
# not read pip's configuration, so the indexes, find-links, constraints and certificates pip is
# configured with (environment, then configuration files) are handed to it; with several
# indexes every one is considered, as pip does, the first listed winning a tie (local mirrors
# before PyPI). `pip check` then proves the lock whole.
pip_install uv==0.13.9
pip_setting() {  # pip's own setting: its PIP_* environment variable, else its configuration files
  local env="PIP_$(tr 'a-z-' 'A-Z_' <<<"$1")"
  if [ -n "${!env:-}" ]; then echo "${!env}"; else "$VENV/bin/pip" config get "global.$1" 2>/dev/null || true; fi
}
uv_args=(--python "$VENV/bin/python" --no-deps --index-strategy unsafe-best-match)
index=$(pip_setting index-url)
[ -z "$index" ] || uv_args+=(--default-index "$index")
for url in $(pip_setting extra-index-url); do uv_args+=(--index "$url"); done
for links in $(pip_setting find-links); do uv_args+=(--find-links "$links"); done
for constraint in $(pip_setting constraint); do uv_args+=(--constraint "$constraint"); done
cert=$(pip_setting cert)
[ -z "$cert" ] || export SSL_CERT_FILE="$cert"
lock=$(mktemp)
trap 'rm -f "$lock"' EXIT
grep -v -E '^[[:space:]]*(#|$)' requirements.lock > "$lock"
log=$(mktemp)
if ! "$VENV/bin/uv" pip install -q "${uv_args[@]}" -r "$lock" >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"
  echo "setup: installing requirements.lock failed" >&2; exit 1
fi
rm -f "$log"
check=$("$VENV/bin/pip" check --disable-pip-version-check 2>&1) || {
  echo "$check" >&2; echo "setup: requirements.lock is not self-consistent" >&2; exit 1; }
# facenet-pytorch pins an old torch and numpy; its code runs fine on ours.
pip_install --no-deps facenet-pytorch==2.6.0 || exit 1
pip_install --no-deps --no-build-isolation -e . || exit 1
echo "$want" > "$STAMP"
echo "setup: $VENV is ready"
