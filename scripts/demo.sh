#!/usr/bin/env bash
# Installs (if needed) and runs ailora's main job: the demo sweep (LoRA, PiSSA, MiLoRA, AILoRA at rank 8
# on all-MiniLM-L6-v2, movie-sentiment), printing its table and where the report and plots are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/ailora demo "$@"
