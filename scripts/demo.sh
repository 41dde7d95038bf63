#!/usr/bin/env bash
# Installs (if needed) and runs ailora's main job on the embedded default model (all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/ailora init --model minilm --method ailora --rank 8 --out out/minilm-ailora-init --overwrite "$@"
