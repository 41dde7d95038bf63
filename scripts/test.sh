#!/usr/bin/env bash
# Installs (if needed) and runs the whole test suite: tiers 1-3, two pytest workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -n 2 -q "$@"
