#!/usr/bin/env bash
# Run the pipeline (dvc repro) with the package's environment on PATH; arguments go to dvc repro.
# The CPU code paths are pinned (g2rl_core/provenance.py, PINNED_CPU_ENV) before any stage loads
# torch, so that another x86-64 machine computes the same bits; every stage records its machine and
# wall time in run_info.json and prints it when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
eval "$(python -m g2rl_core.provenance)"
start=$(date +%s)
dvc repro "$@"
echo "dvc repro: $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s in all" >&2
