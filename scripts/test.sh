#!/usr/bin/env bash
# The test suite on a fresh machine: set up, lint, then pytest on tiny models and manifests
# made at test time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check nemo_tl tests examples bench
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
