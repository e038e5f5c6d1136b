#!/usr/bin/env bash
# Set up everything nemo_tl needs on a fresh machine: Debian's espeak-ng (speech for the demo
# and the corpus tool), a virtual environment in .venv, torch, and nemo_tl with its pinned
# dependencies (nemo_toolkit[asr] 3.0.x). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v -i "warning" || true
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" 2>&1 | grep -v -i "warning" || true
python -m pip install -q -e ".[test]" 2>&1 | grep -v -i "warning" || true
python -c "import nemo_tl, nemo; print('nemo_tl ready: nemo_toolkit', nemo.__version__)" 2>&1 | grep -v -E "OneLogger|exporters"
