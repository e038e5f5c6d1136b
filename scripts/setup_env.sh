#!/usr/bin/env bash
# Set up everything nemo_tl needs on a fresh machine: a virtual environment in .venv with torch
# and nemo_tl's pinned dependencies with every extra (nemo_toolkit[asr] 3.0.x; the synth extra's
# espeakng-loader wheel that speaks for the demo and the corpus tool; the plots extra), then
# Debian's espeak-ng when apt-get can install it (optional while the wheel speaks: the tests of
# the system backends use it).
#
# Idempotent. A run that succeeds records a hash of setup.py and this script in
# .venv/.nemo_tl-setup; while both are unchanged, the next run only checks the installed
# versions (about a second). Delete that file (or .venv) to force a full check.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
TORCH=torch==2.13.0
STAMP=.venv/.nemo_tl-setup
export PIP_DISABLE_PIP_VERSION_CHECK=1
LOG=$(mktemp)
trap 'rm -f "$LOG" "$LOG.ready"' EXIT

# Runs a command with its output in $LOG; shows all of it (warnings included) only if it fails.
quietly() {
  if ! "$@" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "setup_env.sh: failed: $*" >&2
    exit 1
  fi
}

fingerprint=$(cat setup.py scripts/setup_env.sh | sha256sum | cut -d' ' -f1)

if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(head -n 1 "$STAMP")" = "$fingerprint" ] \
  && .venv/bin/python -c 'import importlib.metadata as m
for name in ("nemo_tl", "nemo_toolkit", "torch", "espeakng-loader", "pytest", "ruff"): m.version(name)' 2>/dev/null; then
  sed -n 2p "$STAMP"
  exit 0
fi

rm -f "$STAMP"
[ -x .venv/bin/python ] || { echo "setup: creating .venv with $("$PY" --version)"; quietly "$PY" -m venv .venv; }
echo "setup: installing torch, nemo_tl and its dependencies into .venv (minutes on a fresh machine)"
quietly .venv/bin/python -m pip install --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || quietly .venv/bin/python -m pip install "$TORCH"
quietly .venv/bin/python -m pip install -e ".[all,test]"  # all: the synth and plots extras

# espeak-ng from Debian: a fallback and the system backends' tests, never a requirement here.
if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n); else SUDO=(none); fi
  if [ "${SUDO[*]}" = none ]; then
    apt_note="not installed (apt-get needs root or passwordless sudo)"
  elif "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=0 update -qq >"$LOG" 2>&1 \
    && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=0 install -y -qq espeak-ng \
      >>"$LOG" 2>&1; then
    apt_note="installed with apt-get"
  else
    apt_note="not installed (apt-get failed: $(grep -m 1 -E '^(E|W):' "$LOG" || tail -n 1 "$LOG"))"
  fi
  echo "setup: Debian's espeak-ng $apt_note"
fi

# Which espeak-ng backend speaks (nemo_tl.data.synth_corpus picks the same one); none is fatal.
if ! .venv/bin/python -c 'import nemo, nemo_tl
from nemo_tl.data.synth_corpus import describe_backend
print(f"nemo_tl ready: nemo_toolkit {nemo.__version__}; speech: {describe_backend()}")' >"$LOG.ready" 2>"$LOG"; then
  cat "$LOG" >&2
  echo "setup_env.sh: nemo_tl does not import or no espeak-ng backend speaks (output above)" >&2
  exit 1
fi
ready=$(tail -n 1 "$LOG.ready")
echo "$ready"
printf '%s\n%s\n' "$fingerprint" "$ready" >"$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"
