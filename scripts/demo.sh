#!/usr/bin/env bash
# The main job on a fresh machine: set up, then fine-tune an English QuartzNet to German
# (keep_shared, reinit, frozen blocks, replay) on synthesized speech and print WER/CER per run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m nemo_tl.demo "$@"
