#!/usr/bin/env bash
# Run the pipeline (dvc repro) with the package's environment on PATH; arguments go to dvc repro,
# or, when they start with `exp`, to dvc itself (`scripts/repro.sh exp run -S profile=paper-smoke`).
# Every stage pins the CPU code paths itself (g2rl_core.provenance.pin_cpu_paths), so plain
# `dvc repro` gives the same bits; this script adds the environment and the total wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
start=$(date +%s)
if [ "${1:-}" = exp ]; then dvc "$@"; else dvc repro "$@"; fi
echo "dvc ${1:-repro}: $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s in all" >&2
